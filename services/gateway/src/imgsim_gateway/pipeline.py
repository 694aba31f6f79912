"""The gateway's side of the pipeline: image events in, searches and lookups over Kafka.

Writes go to the images topic exactly as upstream producers write them (key = image id,
value = raw bytes, ``metadata`` header; a null value deletes) and are acknowledged by the
broker before the gateway answers. With ``wait=true`` the gateway then asks the indexer
for the image's record until it reflects the write (its source partition and offset
reach the write's) or, for a delete, until it is gone.

Searches cross Kafka through :class:`~imgsim_core.requestreply.Requester`; a search
whose embedding is cached goes straight to the indexer (searches topic), skipping the
embedder; see :mod:`imgsim_gateway.cache`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import Counter
from pydantic import BaseModel, ValidationError

from imgsim_core.contracts import (
    Crop,
    DuplicatesReplied,
    DuplicatesRequested,
    Example,
    ImageRecord,
    IndexerStatus,
    LookupRequested,
    Metadata,
    ReindexRequested,
    ReindexStatus,
    SearchHit,
    SearchReplied,
    SearchRequested,
    StatusRequested,
    VectorSearchRequested,
)
from imgsim_core.errors import IMAGE_FAULTS, ErrorCode
from imgsim_core.images import (
    CONTENT_TYPES,
    ImageError,
    check_crop,
    decode_rgb,
    decoded_pixels,
    inspect_image,
)
from imgsim_core.kafka import Outage, encode_metadata, now_ms, produced_headers, send_acked
from imgsim_core.requestreply import Requester, RequestTimeoutError
from imgsim_core.topics import Header
from imgsim_gateway.cache import SearchCache
from imgsim_gateway.errors import (
    BadRequestError,
    GatewayError,
    InvalidImageError,
    NotFoundError,
    PayloadTooLargeError,
    UpstreamError,
    UpstreamTimeoutError,
)
from imgsim_gateway.schemas import SearchOptions
from imgsim_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)
WRITES = Counter(
    "imgsim_gateway_writes",
    "Image events the broker acknowledged (durable), by kind: image or delete.",
    ["kind"],
)

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


_WAIT_POLL_S = 0.1
_Reply = TypeVar("_Reply", bound=BaseModel)


_DATA_URL = re.compile(r"data:[\w.+-]+/[\w.+-]+(?:;[\w.+-]+=[\w.+-]+)*;base64,", re.ASCII)
_MIME_BREAKS = str.maketrans("", "", " \t\r\n")


def decode_base64(data: str) -> bytes:
    """Standard base64, as a data URL (``data:image/png;base64,...``) too, and with the
    line breaks of MIME base64 (RFC 2045); any other character is refused."""
    if data.startswith("data:"):
        prefix = _DATA_URL.match(data)
        if prefix is None:
            raise BadRequestError(
                "image_data is a data URL that is not data:<type>;base64,...",
                code="invalid_base64",
            )
        data = data[prefix.end() :]
    try:
        return base64.b64decode(data.translate(_MIME_BREAKS), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequestError("image_data is not valid base64", code="invalid_base64") from exc


@dataclass(frozen=True, slots=True)
class Written:
    """Where a write landed on the images topic."""

    image_id: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Query:
    """What a search looks for: image bytes (a region of them with ``crop``), a text, an
    indexed image's id, or examples (``positive``, ``negative``; images as base64)."""

    image: bytes | None = None
    text: str | None = None
    like_image_id: str | None = None
    crop: Crop | None = None
    positive: tuple[Example, ...] = ()
    negative: tuple[Example, ...] = ()

    @property
    def cache_subject(self) -> bytes | None:
        """Bytes that identify this query's embedding (examples: their combination;
        None for search by id)."""
        if self.image is not None:
            box = b"" if self.crop is None else self.crop.model_dump_json().encode()
            return b"image:" + box + b":" + self.image
        if self.text is not None:
            return b"text:" + self.text.encode()
        if self.positive:
            return (
                b"examples:"
                + json.dumps(
                    [
                        [_example_key(e) for e in self.positive],
                        [_example_key(e) for e in self.negative],
                    ]
                ).encode()
            )
        return None

    @property
    def needs_embedding(self) -> bool:
        """Whether the embedder has work in it (an id or a cached vector does not)."""
        if self.positive:
            return any(e.image is not None or e.text is not None
                       for e in (*self.positive, *self.negative))  # fmt: skip
        return self.like_image_id is None


def _example_key(example: Example) -> dict[str, object]:
    """An example as it counts for the cache: an image by the hash of its base64."""
    key = example.model_dump(exclude_none=True)
    if example.image is not None:
        key["image"] = hashlib.sha256(example.image.encode()).hexdigest()
    return key


class PixelBudget:
    """At most ``total`` pixels decoding at once (first come, first served); one request
    larger than the whole budget runs alone. Bounds the memory concurrent decodes take:
    one 7000×7000 PNG is ~200 MB of RGB in Pillow, and a few of them at once are gigabytes."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        pixels = min(pixels, self.total)
        if self._waiters or self.used + pixels > self.total:
            future = asyncio.get_running_loop().create_future()
            self._waiters.append((pixels, future))
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._release(pixels)  # granted just as the caller gave up
                else:
                    self._waiters.remove((pixels, future))
                    self._wake()
                raise
        else:
            self.used += pixels
        try:
            yield
        finally:
            self._release(pixels)

    def _release(self, pixels: int) -> None:
        self.used -= pixels
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.total:
            pixels, future = self._waiters.popleft()
            self.used += pixels
            future.set_result(None)


class Pipeline:
    def __init__(
        self,
        settings: GatewaySettings,
        producer: AIOKafkaProducer,
        requester: Requester,
        cache: SearchCache,
    ) -> None:
        self.settings = settings
        self.topics = settings.kafka.topics
        self.cache = cache
        self._producer = producer
        self._requester = requester
        self._status: tuple[float, IndexerStatus] | None = None
        self._outage = Outage("producing to Kafka", log)
        self.decoding = PixelBudget(settings.decode_budget_pixels)

    @property
    def searches_in_flight(self) -> int:
        return self._requester.pending

    # -- writes ---------------------------------------------------------------------------

    async def validate_image(self, data: bytes, crop: Crop | None = None) -> str:
        """Check the bytes fully and return their MIME type; raise a client error otherwise.

        The header check (format, size, pixel count) comes first and is cheap; then the
        image is decoded once off the event loop (big JPEGs in draft mode), so truncated
        and corrupt images are refused here instead of becoming dead letters later.
        """
        limits = self.settings.limits
        try:
            info = inspect_image(data, limits)
            if crop is not None:
                check_crop(info, crop.box())
            async with self.decoding.hold(decoded_pixels(info)):
                await asyncio.to_thread(decode_rgb, data, limits)
        except ImageError as exc:
            if exc.code == ErrorCode.IMAGE_TOO_LARGE:
                raise PayloadTooLargeError(exc.message, code=exc.code) from exc
            raise InvalidImageError(exc.message, code=exc.code) from exc
        return CONTENT_TYPES[info.format]

    def validate_metadata(self, metadata: Metadata) -> bytes:
        encoded = encode_metadata(metadata)
        if len(encoded) > self.settings.limits.max_metadata_bytes:
            raise BadRequestError(
                f"metadata is {len(encoded)} bytes as JSON; the limit is "
                f"{self.settings.limits.max_metadata_bytes}",
                code="metadata_too_large",
            )
        return encoded

    async def submit_image(self, image_id: str, data: bytes, metadata: Metadata) -> Written:
        """Produce the image event and return once the broker has it (durable)."""
        content_type = await self.validate_image(data)
        headers = produced_headers()
        headers += [
            (Header.METADATA, self.validate_metadata(metadata)),
            (Header.CONTENT_TYPE, content_type.encode()),
        ]
        return await self._produce(image_id, data, headers)

    async def delete_image(self, image_id: str) -> Written:
        """Produce a tombstone: the delete flows through the pipeline like any write."""
        return await self._produce(image_id, None, produced_headers())

    async def _produce(
        self, image_id: str, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> Written:
        try:
            meta = await send_acked(
                self._producer, self.topics.images, value, key=image_id.encode(),
                headers=headers, timeout_s=self.settings.kafka.send_timeout_s,
            )  # fmt: skip
        except KafkaError as exc:
            self._outage.failed(exc)
            raise UpstreamError("the event log is unavailable; retry later") from exc
        self._outage.ok()
        WRITES.labels("delete" if value is None else "image").inc()
        return Written(image_id, meta.partition, meta.offset)

    async def wait_visible(self, written: Written, *, deleted: bool) -> None:
        """Return once the write is searchable (or gone); 504 after the bound."""
        bound = self.settings.wait_timeout_s
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            remaining = deadline - time.monotonic()
            try:
                record = await self.lookup(written.image_id, timeout_s=min(3.0, remaining))
            except UpstreamTimeoutError:
                continue
            if deleted and not record.found:
                return
            if (
                not deleted
                and record.found
                and record.source_partition == written.partition
                and record.source_offset is not None
                and record.source_offset >= written.offset
            ):
                return
            await asyncio.sleep(_WAIT_POLL_S)
        what = "deleted" if deleted else "searchable"
        raise UpstreamTimeoutError(
            f"the write is accepted and durable, but was not {what} within {bound:.0f} s; "
            "it will still be applied"
        )

    # -- reads ----------------------------------------------------------------------------

    async def lookup(
        self, image_id: str, *, timeout_s: float | None = None, include_vector: bool = False
    ) -> ImageRecord:
        timeout = timeout_s or self.settings.status_timeout_s
        request = LookupRequested(
            image_id=image_id, include_vector=include_vector,
            deadline_ms=now_ms() + int(timeout * 1000),
        )  # fmt: skip
        record = await self._ask(self.topics.lookups, request, timeout, ImageRecord)
        if record.error is not None:
            raise UpstreamError(record.error)
        return record

    async def status(self) -> IndexerStatus:
        timeout = self.settings.status_timeout_s
        request = StatusRequested(deadline_ms=now_ms() + int(timeout * 1000))
        status = await self._ask(self.topics.status, request, timeout, IndexerStatus)
        self._status = (time.monotonic(), status)
        return status

    async def reindex(
        self, action: Literal["start", "status", "drop_old"], model_id: str | None = None
    ) -> ReindexStatus:
        timeout = self.settings.status_timeout_s * 3  # opening a collection takes a moment
        request = ReindexRequested(
            action=action, model_id=model_id, deadline_ms=now_ms() + int(timeout * 1000)
        )
        status = await self._ask(self.topics.admin, request, timeout, ReindexStatus)
        if status.error is not None and status.error.startswith("bad_request"):
            raise BadRequestError(status.error)
        return status

    async def model_id(self) -> str | None:
        """The indexer's model id, refreshed at most every 30 s (keys the embedding cache)."""
        if self._status is None or time.monotonic() - self._status[0] > 30:
            try:
                await self.status()
            except UpstreamTimeoutError:  # no indexer answers; Kafka down is a 503 here too
                return None
        return self._status[1].model_id if self._status else None

    async def search(self, query: Query, options: SearchOptions) -> tuple[list[SearchHit], bool]:
        """Hits best first, and whether they came from the result cache."""
        params = options.model_dump()
        cached = await self.cache.get_result(query.cache_subject, query.like_image_id, params)
        if cached.hits is not None:  # these exact bytes were validated when it was stored
            return cached.hits, True
        if query.image is not None:
            await self.validate_image(query.image, query.crop)
        for example in (*query.positive, *query.negative):
            if example.image is not None:
                await self.validate_image(decode_base64(example.image), example.crop)
        model_id = await self.model_id()
        timeout = self.settings.search_timeout_s
        deadline = now_ms() + int(timeout * 1000)
        vector = await self.cache.get_embedding(query.cache_subject, model_id)
        request: BaseModel
        examples = {"positive": list(query.positive), "negative": list(query.negative)}
        if vector is not None or not query.needs_embedding:
            request = VectorSearchRequested(
                vector=vector, like_image_id=query.like_image_id, model_id=model_id,
                deadline_ms=deadline, **(examples if vector is None else {}), **params,
            )  # fmt: skip
            topic = self.topics.searches
        else:
            request = SearchRequested(
                image=base64.b64encode(query.image).decode("ascii") if query.image else None,
                text=query.text, crop=query.crop, deadline_ms=deadline, **examples, **params,
            )  # fmt: skip
            topic = self.topics.queries
        answer = await self._ask(topic, request, timeout, SearchReplied)
        if answer.error is not None:
            raise reply_error(answer.error, answer.error_code, "search_failed")
        if vector is None and answer.query_vector and answer.model_id:
            await self.cache.put_embedding(
                query.cache_subject, answer.model_id, answer.query_vector
            )
        await self.cache.put_result(
            query.cache_subject, query.like_image_id, params, answer.hits, cached.generation
        )
        return answer.hits, False

    async def duplicates(self, request: DuplicatesRequested) -> DuplicatesReplied:
        """A page of duplicate groups (``request.deadline_ms`` is replaced)."""
        timeout = self.settings.search_timeout_s * 3  # a page runs a search for each image
        deadline = now_ms() + int(timeout * 1000)
        asked = request.model_copy(update={"deadline_ms": deadline})
        answer = await self._ask(self.topics.duplicates, asked, timeout, DuplicatesReplied)
        if answer.error is not None:
            raise reply_error(answer.error, answer.error_code, "duplicates_failed")
        return answer

    async def same_content(self, data: bytes) -> list[str]:
        """Ids of the indexed images with exactly these bytes."""
        digest = hashlib.sha256(data).hexdigest()
        request = DuplicatesRequested(content_sha256=digest, max_group=50, deadline_ms=0)
        answer = await self.duplicates(request)
        return [i for g in answer.groups for i in (g.image_id, *(m.image_id for m in g.members))]

    async def kafka_ok(self) -> bool:
        try:
            await self._producer.client.fetch_all_metadata()
        except KafkaError:
            return False
        return True

    async def _ask(
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
