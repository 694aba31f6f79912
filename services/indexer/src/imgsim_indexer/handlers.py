"""The indexer's FastStream router: index vectors; answer searches, lookups and status.

- ``index_vectors`` (batch, NACK_ON_ERROR): offsets are committed only after the batch's
  upserts/deletes are durable and its dead letters are acknowledged; any other failure
  makes FastStream seek back and redeliver the batch (point ids are UUIDv5 of the image
  id, so replays overwrite). It reads the raw records, because a tombstone (null value)
  is a delete. A batch that changed the store then bumps the result-cache generation in
  Redis (:mod:`imgsim_indexer.cache`; a Redis failure is logged, never fails the batch),
  and a lookup of an image id the batch writes waits until that bump
  (:class:`~imgsim_indexer.cache.Landing`), so a write that waits is answered only once
  no cached result can hide it.
- ``search``, ``lookup`` and ``status`` are request/reply responders: FastStream
  publishes the returned model to the request's ``reply_to`` topic with its
  ``correlation_id``. They take the message as
  :class:`~imgsim_core.responders.Received` (its bytes and headers, with no thread hop
  for FastStream's ``Context``) and decode it with
  :func:`imgsim_core.responders.decode_request`, so a malformed request gets an error
  reply (``bad_request``) instead of leaving the asker waiting for its timeout. A
  request past its deadline is dropped by raising ``AckMessage``, the one way to end a
  handler without FastStream publishing a reply.
- What a search, a lookup or a duplicates page is answered, once decoded and in time, is
  :mod:`imgsim_indexer.answers`; this module is the Kafka side of them.

Why the router is built by a function and its handlers take raw messages:

- The topic names, group ids and fetch settings of every subscriber come from the
  settings (a deployment's topic prefix among them), and FastStream needs them when a
  subscriber is declared; a module-level router would have to read the environment at
  import. So :func:`build_router` declares the subscribers and closes over
  :class:`IndexerState`, the one object that carries the resources the lifespan opens.
- A typed body would make FastStream validate before the handler runs, and a request
  that fails validation would get no reply at all: the asker would wait for its timeout.
  The raw body and :func:`~imgsim_core.responders.decode_request` answer it with
  ``bad_request`` instead. For the same reason the AsyncAPI document is declared from
  the payload models (:mod:`imgsim_core.asyncapi`), not read from these subscribers,
  whose bodies are bytes; a test checks that every topic they consume is in it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer, ConsumerRecord
from faststream import AckPolicy
from faststream.exceptions import AckMessage
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.subscriber.usecase import DefaultSubscriber
from prometheus_client import Counter, Histogram
from redis.asyncio import Redis

from imgsim_core.contracts import (
    DuplicatesReplied,
    DuplicatesRequested,
    ImageRecord,
    IndexerStatus,
    LookupRequested,
    ReindexRequested,
    ReindexStatus,
    SearchReplied,
    StatusRequested,
    VectorSearchRequested,
)
from imgsim_core.kafka import batch_records, produce_all, records_of, safe_batch_parser
from imgsim_core.redisclient import generation_key
from imgsim_core.responders import BadRequestError, Received, decode_request, received
from imgsim_indexer import answers
from imgsim_indexer.cache import Landing, RollbackWatch, bump_generation
from imgsim_indexer.errors import (
    NotStartedError,
    ReindexRefusedError,
    StoreError,
)
from imgsim_indexer.reindex import Reindexer
from imgsim_indexer.serving import Collections
from imgsim_indexer.settings import IndexerSettings

log = logging.getLogger(__name__)

UPSERTED = Counter("imgsim_indexer_points_upserted", "Points upserted into the vector store.")
DELETED = Counter("imgsim_indexer_points_deleted", "Points deleted from the vector store.")
DEADLETTERS = Counter(
    "imgsim_indexer_deadletters", "Vector records sent to the dead-letter topic.", ["reason"]
)
UPSERT_SECONDS = Histogram(
    "imgsim_indexer_upsert_batch_seconds", "Time to apply one batch of writes to the store."
)


@dataclass(slots=True)
class IndexerState:
    """What the handlers use: the collections, the reindexer and the clients the app's
    lifespan starts."""

    collections: Collections
    reindexer: Reindexer | None = None  # None: reindex requests fail (tests)
    deadletter_producer: AIOKafkaProducer | None = None
    redis: Redis | None = None  # None: no generation bumps (tests without Redis)
    bump_owed: bool = False  # a bump failed (Redis down): retried with the next batch
    landing: Landing = field(default_factory=Landing)  # a lookup waits for its batch's bump
    rollback: RollbackWatch | None = None  # None: the generation is not watched (tests)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def producer(self) -> AIOKafkaProducer:
        if self.deadletter_producer is None:
            raise NotStartedError("the dead-letter producer is not started")
        return self.deadletter_producer


def build_router(settings: IndexerSettings, state: IndexerState) -> KafkaRouter:
    router = KafkaRouter()
    kafka = settings.kafka
    topics = kafka.topics

    def responder(topic: str, name: str, description: str) -> DefaultSubscriber:
        """A request/reply responder: its own group, from the earliest offset (a new group
        must not miss requests sent while it joins; stale ones are dropped by their
        deadline), with the latency path's small fetch wait."""
        return router.subscriber(
            topic,
            group_id=f"{settings.group_id}-{name}",
            auto_offset_reset="earliest",
            fetch_max_wait_ms=kafka.latency_fetch_max_wait_ms,
            **kafka.membership,
            decoder=received,
            title=name,
            description=description,
        )

    vectors = router.subscriber(
        topics.vectors,
        batch=True,
        group_id=settings.group_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        parser=safe_batch_parser,
        decoder=batch_records,
        max_records=settings.vectors_max_records,
        **kafka.bulk_polling,
        **kafka.membership,
        title="index-vectors",
        description="Upserts ImageEmbedded vectors; a null value (tombstone) deletes.",
    )

    state.collections.watch(vectors)

    @vectors
    async def index_vectors(message: KafkaMessage) -> None:
        records: tuple[ConsumerRecord[bytes, bytes], ...] = records_of(message)
        async with state.landing.held(record.key for record in records):
            with UPSERT_SECONDS.time():
                plan = await state.collections.apply(records)
            if state.redis is not None and (plan.upserts or plan.deletes or state.bump_owed):
                bumped = await bump_generation(
                    state.redis,
                    generation_key(kafka.topic_prefix),
                    timeout_s=settings.redis.timeout_s,
                )
                state.bump_owed = bumped is None
                if state.rollback is not None:
                    state.rollback.saw(bumped)
        if plan.dead_letters:
            await produce_all(state.producer, plan.dead_letters)
        UPSERTED.inc(len(plan.upserts))
        DELETED.inc(len(plan.deletes))
        for code in plan.dead_letter_codes:
            DEADLETTERS.labels(code).inc()
        log.debug(
            "batch of %d: %d upserted, %d deleted, %d dead letters",
            len(records),
            len(plan.upserts),
            len(plan.deletes),
            len(plan.dead_letters),
        )

    @responder(
        topics.searches, "search", "VectorSearchRequested JSON → SearchReplied (to reply_to)."
    )
    async def search(message: Received) -> SearchReplied:
        try:
            request = decode_request(message.headers, message.body, VectorSearchRequested)
        except BadRequestError as exc:
            answers.SEARCHES.labels(exc.code).inc()
            return SearchReplied(error=exc.reason, error_code=exc.code)
        if request is None:
            answers.SEARCHES.labels("expired").inc()
            raise AckMessage()  # no reply: nobody waits for it any more
        return await answers.search(state.collections, request, settings.dim)

    @responder(topics.lookups, "lookup", "LookupRequested JSON → ImageRecord (to reply_to).")
    async def lookup(message: Received) -> ImageRecord:
        try:
            request = decode_request(message.headers, message.body, LookupRequested)
        except BadRequestError as exc:
            answers.LOOKUPS.labels(exc.code).inc()
            return ImageRecord(image_id="", found=False, error=f"{exc.code}: {exc.reason}")
        if request is None:
            answers.LOOKUPS.labels("expired").inc()
            raise AckMessage()
        await state.landing.passed(request.image_id)
        return await answers.lookup(state.collections, request)

    @responder(topics.duplicates, "duplicates", "DuplicatesRequested JSON → DuplicatesReplied.")
    async def duplicates(message: Received) -> DuplicatesReplied:
        try:
            request = decode_request(message.headers, message.body, DuplicatesRequested)
        except BadRequestError as exc:
            answers.DUPLICATE_PAGES.labels(exc.code).inc()
            return DuplicatesReplied(error=exc.reason, error_code=exc.code)
        if request is None:
            answers.DUPLICATE_PAGES.labels("expired").inc()
            raise AckMessage()
        return await answers.duplicates(state.collections, request)

    @responder(topics.status, "status", "StatusRequested JSON → IndexerStatus (to reply_to).")
    async def status(message: Received) -> IndexerStatus:
        error: str | None = None
        try:
            if decode_request(message.headers, message.body, StatusRequested) is None:
                raise AckMessage()
        except BadRequestError as exc:
            error = f"{exc.code}: {exc.reason}"  # the status is still worth answering
        store = state.collections.live
        try:
            indexed, ready = await store.count(), True
        except StoreError as exc:
            indexed, ready, error = 0, False, str(exc)
        return IndexerStatus(
            ready=ready,
            store=store.name,
            collection=store.collection,
            indexed=indexed,
            model_id=state.collections.model_id,
            started_at=state.started_at,
            error=error,
        )

    @responder(
        topics.admin, "admin", "ReindexRequested JSON (start, status, drop_old) → ReindexStatus."
    )
    async def admin(message: Received) -> ReindexStatus:
        store = state.collections.live
        try:
            request = decode_request(message.headers, message.body, ReindexRequested)
        except BadRequestError as exc:
            return ReindexStatus(
                state="failed", collection=store.collection, error=f"{exc.code}: {exc.reason}"
            )
        if request is None:
            raise AckMessage()
        if state.reindexer is None:
            raise NotStartedError("the reindexer is not started")
        try:
            if request.action == "start":
                return await state.reindexer.start(request.model_id)
            if request.action == "drop_old":
                return await state.reindexer.drop_old()
            return await state.reindexer.status()
        except (StoreError, ReindexRefusedError) as exc:
            log.warning("reindex %s failed: %s", request.action, exc)
            return ReindexStatus(state="failed", collection=store.collection, error=str(exc))

    return router
