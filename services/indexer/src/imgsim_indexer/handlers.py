"""The indexer's FastStream router: index vectors, answer searches and status requests.

- ``index_vectors`` (batch, NACK_ON_ERROR): offsets are committed only after the batch's
  upserts/deletes are durable and its dead letters are acknowledged; any other failure
  makes FastStream seek back and redeliver the batch (point ids are UUIDv5 of the image
  id, so replays overwrite). It reads the raw records, because a tombstone (null value)
  is a delete.
- ``search`` and ``status`` are request/reply responders: FastStream publishes the
  returned model to the request's ``reply_to`` topic with its ``correlation_id``. A
  search past its deadline is dropped by raising ``AckMessage``, the one way to end a
  handler without FastStream publishing an empty reply.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer, ConsumerRecord
from faststream import AckPolicy
from faststream.exceptions import AckMessage
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import Counter, Histogram

from imgsim_core.contracts import (
    IndexerStatus,
    SearchHit,
    SearchReplied,
    StatusRequested,
    VectorSearchRequested,
    unpack_vector,
)
from imgsim_core.kafka import now_ms, produce_all, safe_batch_parser
from imgsim_indexer.errors import NotStartedError, StoreError
from imgsim_indexer.operations import plan_batch
from imgsim_indexer.settings import IndexerSettings
from imgsim_indexer.store import VectorStore

log = logging.getLogger(__name__)

UPSERTED = Counter("imgsim_indexer_points_upserted", "Points upserted into the vector store.")
DELETED = Counter("imgsim_indexer_points_deleted", "Points deleted from the vector store.")
DEADLETTERS = Counter("imgsim_indexer_deadletters", "Vector records sent to the dead-letter topic.")
UPSERT_SECONDS = Histogram(
    "imgsim_indexer_upsert_batch_seconds", "Time to apply one batch of writes to the store."
)
SEARCHES = Counter("imgsim_indexer_searches", "Vector searches answered, by outcome.", ["outcome"])


@dataclass(slots=True)
class IndexerState:
    """What the handlers use; the app's lifespan opens the store and sets the producer."""

    store: VectorStore
    deadletter_producer: AIOKafkaProducer | None = None

    @property
    def producer(self) -> AIOKafkaProducer:
        if self.deadletter_producer is None:
            raise NotStartedError("the dead-letter producer is not started")
        return self.deadletter_producer


def build_router(settings: IndexerSettings, state: IndexerState) -> KafkaRouter:
    router = KafkaRouter()
    kafka = settings.kafka
    topics = kafka.topics

    @router.subscriber(
        topics.vectors,
        batch=True,
        group_id=settings.group_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        parser=safe_batch_parser,
        max_records=kafka.bulk_max_records,
        fetch_max_wait_ms=kafka.bulk_fetch_max_wait_ms,
        title="index-vectors",
        description="Upserts ImageEmbedded vectors; a null value (tombstone) deletes.",
    )
    async def index_vectors(message: KafkaMessage) -> None:
        raw = message.raw_message
        records: tuple[ConsumerRecord[bytes, bytes], ...] = (
            raw if isinstance(raw, tuple) else (raw,)
        )
        plan = plan_batch(
            records, dim=settings.dim, deadletter_topic=topics.deadletter, now=datetime.now(UTC)
        )
        with UPSERT_SECONDS.time():
            await state.store.delete(plan.deletes)
            await state.store.upsert(plan.upserts)
        if plan.dead_letters:
            await produce_all(state.producer, plan.dead_letters)
        UPSERTED.inc(len(plan.upserts))
        DELETED.inc(len(plan.deletes))
        DEADLETTERS.inc(len(plan.dead_letters))
        log.debug(
            "batch of %d: %d upserted, %d deleted, %d dead letters",
            len(records),
            len(plan.upserts),
            len(plan.deletes),
            len(plan.dead_letters),
        )

    @router.subscriber(
        topics.searches,
        group_id=f"{settings.group_id}-search",
        # earliest: a new group must not miss requests sent while it joins; stale ones
        # are dropped by their deadline.
        auto_offset_reset="earliest",
        fetch_max_wait_ms=kafka.latency_fetch_max_wait_ms,
        title="search",
    )
    async def search(request: VectorSearchRequested) -> SearchReplied:
        if request.deadline_ms < now_ms():
            log.debug("dropped a search %d ms past its deadline", now_ms() - request.deadline_ms)
            SEARCHES.labels("expired").inc()
            raise AckMessage()  # no reply: nobody waits for it any more
        try:
            vector = unpack_vector(request.vector)
        except ValueError:
            SEARCHES.labels("bad_request").inc()
            return SearchReplied(
                error="the vector is not base64 of float32", error_code="bad_vector"
            )
        if vector.shape != (settings.dim,):
            SEARCHES.labels("bad_request").inc()
            return SearchReplied(
                error=f"the vector has dim {vector.size}, the index holds dim {settings.dim}",
                error_code="wrong_dim",
            )
        try:
            hits = await state.store.search(
                vector,
                top_k=request.top_k,
                threshold=request.threshold,
                with_metadata=request.include_metadata,
            )
        except StoreError as exc:
            log.warning("search failed: %s", exc)
            SEARCHES.labels("store_error").inc()
            return SearchReplied(error=str(exc), error_code="store_error")
        SEARCHES.labels("ok").inc()
        return SearchReplied(
            hits=[SearchHit(image_id=h.image_id, score=h.score, metadata=h.metadata) for h in hits]
        )

    @router.subscriber(
        topics.status,
        group_id=f"{settings.group_id}-status",
        # earliest: a new group must not miss requests sent while it joins; stale ones
        # are dropped by their deadline.
        auto_offset_reset="earliest",
        fetch_max_wait_ms=kafka.latency_fetch_max_wait_ms,
        title="status",
    )
    async def status(request: StatusRequested) -> IndexerStatus:
        if request.deadline_ms < now_ms():
            raise AckMessage()
        store = state.store
        try:
            indexed = await store.count()
        except StoreError as exc:
            return IndexerStatus(
                ready=False,
                store=store.name,
                collection=store.collection,
                indexed=0,
                error=str(exc),
            )
        return IndexerStatus(
            ready=True, store=store.name, collection=store.collection, indexed=indexed
        )

    return router
