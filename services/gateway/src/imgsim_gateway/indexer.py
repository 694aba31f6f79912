"""Asking the indexer over Kafka request/reply: lookups, status, reindex, duplicates.

Every question crosses Kafka through :class:`~imgsim_core.requestreply.Requester` with a
deadline; no answer in time is a 504, Kafka down a 503, and an error reply becomes the
HTTP error :func:`reply_error` maps its code to. Searches ask through :meth:`IndexerClient.ask`
too (:mod:`imgsim_gateway.searching`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Literal, TypeVar

from aiokafka.errors import KafkaError
from pydantic import BaseModel, ValidationError

from imgsim_core.contracts import (
    DuplicatesReplied,
    DuplicatesRequested,
    ImageRecord,
    IndexerStatus,
    LookupRequested,
    ReindexRequested,
    ReindexStatus,
    StatusRequested,
)
from imgsim_core.errors import IMAGE_FAULTS, ErrorCode
from imgsim_core.kafka import Outage, now_ms
from imgsim_core.requestreply import Requester, RequestTimeoutError
from imgsim_core.topics import Topics
from imgsim_gateway.errors import (
    BadRequestError,
    GatewayError,
    InvalidImageError,
    NotFoundError,
    PayloadTooLargeError,
    UpstreamError,
    UpstreamTimeoutError,
)
from imgsim_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)
_Reply = TypeVar("_Reply", bound=BaseModel)

# Reply error codes that are the client's fault → HTTP errors; any other code is a 502.
_CLIENT_ERRORS: dict[ErrorCode, type[GatewayError]] = {
    **dict.fromkeys(IMAGE_FAULTS, InvalidImageError),
    ErrorCode.BAD_REQUEST: BadRequestError,
    ErrorCode.BAD_BASE64: BadRequestError,
    ErrorCode.IMAGE_TOO_LARGE: PayloadTooLargeError,
    ErrorCode.NOT_FOUND: NotFoundError,
}


def reply_error(message: str, code: ErrorCode | None, fallback: str) -> GatewayError:
    """The HTTP error of a service's error reply: 4xx for the client's faults, else 503
    (with ``fallback`` as its code when the reply named none)."""
    kind = _CLIENT_ERRORS.get(code, UpstreamError) if code else UpstreamError
    return kind(message, code=code or fallback)


class IndexerClient:
    def __init__(self, settings: GatewaySettings, requester: Requester, outage: Outage) -> None:
        self.settings = settings
        self.topics: Topics = settings.kafka.topics
        self._requester = requester
        self._status: tuple[float, IndexerStatus] | None = None
        self._outage = outage  # shared with the writes: one Kafka outage, said once

    @property
    def in_flight(self) -> int:
        """Questions sent and not answered yet (searches among them)."""
        return self._requester.pending

    async def lookup(
        self, image_id: str, *, timeout_s: float | None = None, include_vector: bool = False
    ) -> ImageRecord:
        timeout = timeout_s or self.settings.status_timeout_s
        request = LookupRequested(
            image_id=image_id, include_vector=include_vector,
            deadline_ms=now_ms() + int(timeout * 1000),
        )  # fmt: skip
        record = await self.ask(self.topics.lookups, request, timeout, ImageRecord)
        if record.error is not None:
            raise UpstreamError(record.error)
        return record

    async def status(self) -> IndexerStatus:
        timeout = self.settings.status_timeout_s
        request = StatusRequested(deadline_ms=now_ms() + int(timeout * 1000))
        status = await self.ask(self.topics.status, request, timeout, IndexerStatus)
        self._status = (time.monotonic(), status)
        return status

    async def reindex(
        self, action: Literal["start", "status", "drop_old"], model_id: str | None = None
    ) -> ReindexStatus:
        timeout = self.settings.status_timeout_s * 3  # opening a collection takes a moment
        request = ReindexRequested(
            action=action, model_id=model_id, deadline_ms=now_ms() + int(timeout * 1000)
        )
        status = await self.ask(self.topics.admin, request, timeout, ReindexStatus)
        if status.error is not None and status.error.startswith("bad_request"):
            raise BadRequestError(status.error)
        return status

    def known_model_id(self) -> str | None:
        """The model id of the last status, however old, without asking (None: none yet)."""
        return self._status[1].model_id if self._status else None

    async def model_id(self) -> str | None:
        """The indexer's model id, refreshed at most every 30 s (keys the embedding cache)."""
        if self._status is None or time.monotonic() - self._status[0] > 30:
            try:
                await self.status()
            except UpstreamTimeoutError:  # no indexer answers; Kafka down is a 503 here too
                return None
        return self._status[1].model_id if self._status else None

    async def duplicates(self, request: DuplicatesRequested) -> DuplicatesReplied:
        """A page of duplicate groups (``request.deadline_ms`` is replaced)."""
        timeout = self.settings.search_timeout_s * 3  # a page runs a search for each image
        deadline = now_ms() + int(timeout * 1000)
        asked = request.model_copy(update={"deadline_ms": deadline})
        answer = await self.ask(self.topics.duplicates, asked, timeout, DuplicatesReplied)
        if answer.error is not None:
            raise reply_error(answer.error, answer.error_code, "duplicates_failed")
        return answer

    async def same_content(self, data: bytes) -> list[str]:
        """Ids of the indexed images with exactly these bytes."""
        digest = hashlib.sha256(data).hexdigest()
        request = DuplicatesRequested(content_sha256=digest, max_group=50, deadline_ms=0)
        answer = await self.duplicates(request)
        return [i for g in answer.groups for i in (g.image_id, *(m.image_id for m in g.members))]

    async def ask(
        self, topic: str, request: BaseModel, timeout_s: float, reply_type: type[_Reply]
    ) -> _Reply:
        try:
            raw = await self._requester.request(
                topic, request.model_dump_json().encode(), timeout_s=timeout_s
            )
        except RequestTimeoutError as exc:
            raise UpstreamTimeoutError(
                f"no answer from the pipeline within {timeout_s:.1f} s; retry later"
            ) from exc
        except KafkaError as exc:
            self._outage.failed(exc)
            raise UpstreamError("the event log is unavailable; retry later") from exc
        self._outage.ok()
        try:
            return reply_type.model_validate_json(raw)
        except ValidationError as exc:
            raise UpstreamError(f"a malformed answer came from {topic}") from exc
