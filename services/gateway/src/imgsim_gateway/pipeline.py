"""The gateway's side of the pipeline: produce image events, ask for searches and status.

Writes go to the images topic as upstream producers would write them (key = image id,
value = raw bytes, ``metadata`` header), and are acknowledged by the broker before the
gateway answers 202. Searches and status requests cross Kafka through the shared
:class:`~imgsim_core.requestreply.Requester`.
"""

from __future__ import annotations

import base64
import binascii
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from imgsim_core.contracts import (
    IndexerStatus,
    Metadata,
    SearchHit,
    SearchReplied,
    SearchRequested,
    StatusRequested,
)
from imgsim_core.images import ImageError, inspect_image
from imgsim_core.kafka import encode_metadata, now_ms, produced_headers
from imgsim_core.requestreply import Requester, RequestTimeoutError
from imgsim_core.topics import Header
from imgsim_gateway.errors import (
    BadRequestError,
    InvalidImageError,
    PayloadTooLargeError,
    UpstreamError,
    UpstreamTimeoutError,
)
from imgsim_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

_CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
}
# Error codes in replies that are the client's fault, and their HTTP errors.
_CLIENT_ERRORS = {"bad_image", "bad_request", "invalid_image"}


def decode_base64(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequestError("image_data is not valid base64", code="invalid_base64") from exc


class Pipeline:
    def __init__(
        self, settings: GatewaySettings, producer: AIOKafkaProducer, requester: Requester
    ) -> None:
        self.settings = settings
        self.topics = settings.kafka.topics
        self._producer = producer
        self._requester = requester

    @property
    def searches_in_flight(self) -> int:
        return self._requester.pending

    def validate_image(self, data: bytes) -> str:
        """Check the bytes and return their MIME type; raise a client error otherwise."""
        try:
            info = inspect_image(data, self.settings.limits)
        except ImageError as exc:
            if exc.code == "image_too_large":
                raise PayloadTooLargeError(exc.message, code=exc.code) from exc
            raise InvalidImageError(exc.message, code=exc.code) from exc
        return _CONTENT_TYPES[info.format]

    def validate_metadata(self, metadata: Metadata) -> bytes:
        encoded = encode_metadata(metadata)
        if len(encoded) > self.settings.limits.max_metadata_bytes:
            raise BadRequestError(
                f"metadata is {len(encoded)} bytes as JSON; the limit is "
                f"{self.settings.limits.max_metadata_bytes}",
                code="metadata_too_large",
            )
        return encoded

    async def submit_image(self, image_id: str, data: bytes, metadata: Metadata) -> None:
        """Produce the image event and wait until the broker has it (durable)."""
        content_type = self.validate_image(data)
        headers = produced_headers()
        headers += [
            (Header.METADATA, self.validate_metadata(metadata)),
            (Header.CONTENT_TYPE, content_type.encode()),
        ]
        try:
            await self._producer.send_and_wait(
                self.topics.images, data, key=image_id.encode(), headers=headers
            )
        except KafkaError as exc:
            log.error("producing image %r failed: %s", image_id, exc)
            raise UpstreamError("the event log is unavailable; retry later") from exc

    async def search_image(
        self, data: bytes, *, top_k: int, threshold: float | None, include_metadata: bool
    ) -> list[SearchHit]:
        self.validate_image(data)
        timeout = self.settings.search_timeout_s
        request = SearchRequested(
            image=base64.b64encode(data).decode("ascii"),
            top_k=top_k,
            threshold=threshold,
            include_metadata=include_metadata,
            deadline_ms=now_ms() + int(timeout * 1000),
        )
        reply = await self._ask(self.topics.queries, request.model_dump_json().encode(), timeout)
        answer = SearchReplied.model_validate_json(reply)
        if answer.error is not None:
            code = answer.error_code or "search_failed"
            if code in _CLIENT_ERRORS:
                raise InvalidImageError(answer.error, code=code)
            raise UpstreamError(answer.error, code=code)
        return answer.hits

    async def status(self) -> IndexerStatus:
        timeout = self.settings.status_timeout_s
        request = StatusRequested(deadline_ms=now_ms() + int(timeout * 1000))
        reply = await self._ask(self.topics.status, request.model_dump_json().encode(), timeout)
        try:
            return IndexerStatus.model_validate_json(reply)
        except ValidationError as exc:
            raise UpstreamError("the indexer sent a malformed status") from exc

    async def kafka_ok(self) -> bool:
        try:
            await self._producer.client.fetch_all_metadata()
        except KafkaError:
            return False
        return True

    async def _ask(self, topic: str, value: bytes, timeout_s: float) -> bytes:
        try:
            return await self._requester.request(topic, value, timeout_s=timeout_s)
        except RequestTimeoutError as exc:
            raise UpstreamTimeoutError(
                f"no answer from the pipeline within {timeout_s:.1f} s; retry later"
            ) from exc
        except KafkaError as exc:
            raise UpstreamError("the event log is unavailable; retry later") from exc
