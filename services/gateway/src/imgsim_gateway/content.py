"""Images back: the original bytes from the images topic, and thumbnails cached in Redis.

The log is the blob store. The indexer keeps, for every image, the partition and offset
of the image record its vector came from; :class:`ContentReader` reads that one record
back (one consumer of its own, assigned and seeked, no group). So an image that an
upstream producer put on the topic comes back the same way, and no second copy exists.

A record can be gone from the log while the index still has it: the topic's retention
dropped it, or compaction kept only a newer record under the same key (whose vector is
then on its way). Both answer ``content_gone`` (410) rather than other bytes.

Thumbnails (longest side ``size`` ≤ 512, WebP or JPEG) are keyed by the record's
partition and offset, so a re-upload under the same id never serves the old thumbnail;
Redis down means no cache, never a failed request.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from imgsim_core.images import (
    CONTENT_TYPES,
    THUMBNAIL_FORMATS,
    ImageError,
    decoded_pixels,
    inspect_image,
    sniff_format,
    thumbnail,
)
from imgsim_core.kafka import header
from imgsim_core.settings import ImageLimits, KafkaSettings
from imgsim_core.topics import Header
from imgsim_gateway.checks import PixelBudget
from imgsim_gateway.errors import GatewayError, UpstreamError

log = logging.getLogger(__name__)

MAX_THUMBNAIL = 512


class ContentGoneError(GatewayError):
    status_code = 410
    code = "content_gone"


@dataclass(frozen=True, slots=True)
class Content:
    data: bytes
    content_type: str


def etag(partition: int, offset: int, thumbnail: tuple[int, str] | None = None) -> str:
    """The record's place in the log (and the thumbnail's size and format): it changes
    exactly when the bytes served for the id do."""
    tail = f"-{thumbnail[0]}-{thumbnail[1]}" if thumbnail else ""
    return f'"{partition}-{offset}{tail}"'


class ContentReader:
    """Reads single image records by partition and offset, one read at a time."""

    def __init__(
        self, kafka: KafkaSettings, redis: Redis, budget: PixelBudget, *, thumbnail_ttl_s: int
    ) -> None:
        self._kafka = kafka
        self._redis = redis
        self._budget = budget
        self._ttl = thumbnail_ttl_s
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._kafka.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=self._kafka.max_message_bytes + 64 * 1024,
            fetch_max_bytes=self._kafka.max_message_bytes + 64 * 1024,
        )
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def original(self, image_id: str, partition: int, offset: int) -> Content:
        """The image record's bytes; 410 when the log no longer holds that record."""
        if self._consumer is None:
            raise UpstreamError("the content reader has not started")
        tp = TopicPartition(self._kafka.topics.images, partition)
        try:
            async with self._lock, asyncio.timeout(self._kafka.send_timeout_s * 3):
                self._consumer.assign([tp])
                self._consumer.seek(tp, offset)
                batch = await self._consumer.getmany(tp, timeout_ms=2000, max_records=1)
        except TimeoutError as exc:
            raise UpstreamError("the images topic did not answer in time; retry later") from exc
        except KafkaError as exc:
            raise UpstreamError("the event log is unavailable; retry later") from exc
        records = batch.get(tp, [])
        record = records[0] if records else None
        if (
            record is None
            or record.offset != offset
            or record.value is None
            or record.key != image_id.encode()
        ):
            raise ContentGoneError(
                f"image {image_id!r} is indexed, but its record ({partition}/{offset}) is no "
                "longer in the images topic (retention, or replaced by a newer upload)"
            )
        fmt = sniff_format(record.value)
        declared = header(record.headers, Header.CONTENT_TYPE)
        content_type = CONTENT_TYPES.get(fmt or "") or (declared.decode() if declared else None)
        return Content(record.value, content_type or "application/octet-stream")

    async def thumbnail(
        self, image_id: str, partition: int, offset: int, size: int, fmt: str,
        limits: ImageLimits,
    ) -> Content:  # fmt: skip
        key = f"{self._kafka.topic_prefix}thumb:{partition}:{offset}:{size}:{fmt}"
        content_type = THUMBNAIL_FORMATS[fmt][1]
        cached = await self._cached(key)
        if cached is not None:
            return Content(cached, content_type)
        original = await self.original(image_id, partition, offset)
        try:
            pixels = decoded_pixels(inspect_image(original.data, limits), target=size)
            async with self._budget.hold(pixels):
                data = await asyncio.to_thread(thumbnail, original.data, limits, size, fmt)
        except ImageError as exc:  # an upstream producer's record the embedder refused too
            raise ContentGoneError(f"image {image_id!r} cannot be decoded: {exc.message}") from exc
        await self._store(key, data)
        return Content(data, content_type)

    async def _cached(self, key: str) -> bytes | None:
        if self._ttl <= 0:
            return None
        try:
            raw = await self._redis.get(key)
        except (RedisError, OSError):
            return None
        if raw is None:
            return None
        return raw if isinstance(raw, bytes) else str(raw).encode("latin-1")

    async def _store(self, key: str, data: bytes) -> None:
        if self._ttl <= 0:
            return
        try:
            await self._redis.set(key, data, ex=self._ttl)
        except (RedisError, OSError):
            log.debug("caching a thumbnail failed", exc_info=True)
