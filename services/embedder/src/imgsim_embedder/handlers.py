"""FastStream handlers: images → vectors (bulk), queries → vector searches (latency).

``build_router(settings, state)`` returns a :class:`KafkaRouter` with two subscribers:

- **images** (batch): the raw aiokafka records are read from ``message.raw_message``
  because a null value is a tombstone. :func:`embed_records` turns a batch of records
  into the records to produce — vectors, passed-through tombstones and dead letters, in
  input order (so per-key order holds) — with one ``embed_images`` call for the whole
  batch. The handler produces them with the service's idempotent ``acks=all`` producer
  and returns; ``AckPolicy.NACK_ON_ERROR`` commits only then, and any unexpected error
  (broker, model) seeks back so the batch is redelivered: at-least-once.
- **queries**: drops a query whose deadline has passed, embeds the image or the text as
  urgent work and publishes a :class:`VectorSearchRequested` to the searches topic with the
  incoming ``correlation_id`` and ``reply_to`` (and ``deadline`` header), so the indexer
  answers the gateway directly. ``no_reply=True`` keeps FastStream from sending the
  handler's return value to ``reply_to`` itself. Bad input is answered at once with a
  :class:`SearchReplied` error on ``reply_to``, so the gateway gets a reason, not a timeout.
  ``max_workers`` lets several queries wait in the batcher together.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias

import torch
from aiokafka import AIOKafkaProducer, ConsumerRecord
from faststream import AckPolicy
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaBroker, KafkaMessage
from prometheus_client import Counter

from imgsim_core.contracts import (
    ImageEmbedded,
    Metadata,
    SearchReplied,
    SearchRequested,
    VectorSearchRequested,
    pack_vector,
)
from imgsim_core.images import ImageError, decode_rgb
from imgsim_core.kafka import (
    EventError,
    OutRecord,
    dead_letter_record,
    decode_key,
    decode_metadata,
    header,
    now_ms,
    produce_all,
    produced_headers,
    safe_batch_parser,
)
from imgsim_core.settings import ImageLimits
from imgsim_core.topics import CONTRACT_VERSION, Header, Topics
from imgsim_embedder.batcher import MicroBatcher
from imgsim_embedder.errors import EmbedderError
from imgsim_embedder.model import ImageEncoder
from imgsim_embedder.settings import EmbedderSettings

log = logging.getLogger(__name__)

RECORDS = Counter("imgsim_embedder_records", "Image records handled.", ["outcome"])
QUERIES = Counter("imgsim_embedder_queries", "Search queries handled.", ["outcome"])

Record: TypeAlias = "ConsumerRecord[Any, Any]"


@dataclass
class EmbedderState:
    """What the handlers use; ``app.py`` opens these on start-up and closes them."""

    encoder: ImageEncoder
    batcher: MicroBatcher
    pool: ThreadPoolExecutor
    producer: AIOKafkaProducer


class StateHolder:
    """Gives the handlers the state once the app has started (the router is built before)."""

    def __init__(self) -> None:
        self._state: EmbedderState | None = None

    def set(self, state: EmbedderState | None) -> None:
        self._state = state

    def get(self) -> EmbedderState:
        if self._state is None:
            raise EmbedderError("the embedder has not started")
        return self._state


@dataclass(frozen=True, slots=True)
class _Valid:
    index: int
    image_id: str
    metadata: Metadata
    future: asyncio.Future[torch.Tensor]


def _prepare(encoder: ImageEncoder, data: bytes, limits: ImageLimits) -> torch.Tensor:
    """Decode and preprocess one image; runs in the preprocessing pool."""
    return encoder.preprocess(decode_rgb(data, limits))


async def embed_records(
    records: Sequence[Record],
    *,
    encoder: ImageEncoder,
    batcher: MicroBatcher,
    pool: ThreadPoolExecutor,
    topics: Topics,
    limits: ImageLimits,
) -> list[OutRecord]:
    """The records to produce for a batch of image records, in input order."""
    loop = asyncio.get_running_loop()
    out: list[OutRecord | None] = [None] * len(records)
    valid: list[_Valid] = []
    for i, record in enumerate(records):
        try:
            image_id = decode_key(record.key)
            if record.value is None:
                out[i] = OutRecord(topics.vectors, record.key, None, produced_headers())
                continue
            metadata = decode_metadata(
                header(record.headers, Header.METADATA), limits.max_metadata_bytes
            )
        except EventError as exc:
            out[i] = dead_letter_record(topics.deadletter, record, f"{exc.code}: {exc.message}")
            continue
        future = loop.run_in_executor(pool, _prepare, encoder, record.value, limits)
        valid.append(_Valid(i, image_id, metadata, future))

    tensors: list[torch.Tensor] = []
    embedded: list[_Valid] = []
    for item in valid:
        try:
            tensors.append(await item.future)
            embedded.append(item)
        except ImageError as exc:
            reason = f"{exc.code}: {exc.message}"
            out[item.index] = dead_letter_record(topics.deadletter, records[item.index], reason)

    vectors = await batcher.embed_images(tensors, urgent=False)
    now = datetime.now(UTC)
    model_headers = produced_headers(model_id=encoder.model_id)
    for item, vector in zip(embedded, vectors, strict=True):
        record = records[item.index]
        event = ImageEmbedded(
            image_id=item.image_id,
            model_id=encoder.model_id,
            dim=encoder.dim,
            vector=pack_vector(vector),
            metadata=item.metadata,
            source_offset=record.offset,
            embedded_at=now,
        )
        out[item.index] = OutRecord(
            topics.vectors, record.key, event.model_dump_json().encode(), model_headers
        )
    done = [r for r in out if r is not None]
    for r in done:
        outcome = "dead_letter" if r.topic == topics.deadletter else "vector"
        RECORDS.labels("tombstone" if r.value is None else outcome).inc()
    return done


async def embed_query(
    query: SearchRequested,
    *,
    encoder: ImageEncoder,
    batcher: MicroBatcher,
    pool: ThreadPoolExecutor,
    limits: ImageLimits,
) -> VectorSearchRequested:
    """The query's vector search; raises ImageError (with a code) on bad input."""
    if (query.image is None) == (query.text is None):
        raise ImageError("bad_request", "a search needs exactly one of image or text")
    if query.text is not None:
        vectors = await batcher.embed_text([query.text])
    else:
        try:
            data = base64.b64decode(query.image or "", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ImageError("bad_base64", "the image is not valid base64") from exc
        loop = asyncio.get_running_loop()
        tensor = await loop.run_in_executor(pool, _prepare, encoder, data, limits)
        vectors = await batcher.embed_images([tensor], urgent=True)
    return VectorSearchRequested(
        vector=pack_vector(vectors[0]),
        model_id=encoder.model_id,
        top_k=query.top_k,
        threshold=query.threshold,
        include_metadata=query.include_metadata,
        deadline_ms=query.deadline_ms,
    )


def build_router(settings: EmbedderSettings, holder: StateHolder) -> KafkaRouter:
    topics = settings.kafka.topics
    limits = settings.limits
    router = KafkaRouter()
    searches = router.publisher(
        topics.searches,
        title="searches",
        description="Searches with their query vector; the indexer replies to reply_to.",
        schema=VectorSearchRequested,
    )

    @router.subscriber(
        topics.images,
        batch=True,
        group_id=settings.group_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        parser=safe_batch_parser,
        max_records=settings.kafka.bulk_max_records,
        fetch_max_wait_ms=settings.kafka.bulk_fetch_max_wait_ms,
        title="images",
        description=(
            "Source of truth. Key: image id (UTF-8, 1–256 chars). Value: the encoded image "
            "bytes as they are (JPEG, PNG, WebP, GIF, BMP); null deletes. Headers: "
            "`metadata` (JSON object), optional `content-type`."
        ),
    )
    async def on_images(message: KafkaMessage) -> None:
        state = holder.get()
        raw = message.raw_message
        records = raw if isinstance(raw, tuple) else (raw,)
        outputs = await embed_records(
            records,
            encoder=state.encoder,
            batcher=state.batcher,
            pool=state.pool,
            topics=topics,
            limits=limits,
        )
        await produce_all(state.producer, outputs)

    @router.subscriber(
        topics.queries,
        group_id=f"{settings.group_id}-query",
        # earliest: a new group must not miss queries sent while it joins; stale ones are
        # dropped by their deadline.
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.kafka.latency_fetch_max_wait_ms,
        max_workers=settings.query_concurrency,
        no_reply=True,
        title="queries",
        description="Searches that need an embedding; headers correlation_id, reply_to.",
    )
    async def on_query(body: SearchRequested, message: KafkaMessage, broker: KafkaBroker) -> None:
        if body.deadline_ms < now_ms():
            QUERIES.labels("expired").inc()
            log.debug("dropping query %s: its deadline has passed", message.correlation_id)
            return
        state = holder.get()
        forward = {Header.CONTRACT: CONTRACT_VERSION}
        if deadline := message.headers.get(Header.DEADLINE):
            forward[Header.DEADLINE] = str(deadline)
        try:
            search = await embed_query(
                body,
                encoder=state.encoder,
                batcher=state.batcher,
                pool=state.pool,
                limits=limits,
            )
        except (ImageError, EmbedderError) as exc:
            code = exc.code if isinstance(exc, ImageError) else "embedding_failed"
            QUERIES.labels(code).inc()
            log.info("query %s failed: %s: %s", message.correlation_id, code, exc)
            if message.reply_to:
                await broker.publish(
                    SearchReplied(error=str(exc), error_code=code),
                    message.reply_to,
                    correlation_id=message.correlation_id,
                    headers=forward,
                )
            return
        await searches.publish(
            search,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            headers=forward,
        )
        QUERIES.labels("forwarded").inc()

    return router
