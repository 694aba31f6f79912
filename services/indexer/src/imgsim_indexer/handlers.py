"""The indexer's FastStream router: index vectors; answer searches, lookups and status.

- ``index_vectors`` (batch, NACK_ON_ERROR): offsets are committed only after the batch's
  upserts/deletes are durable and its dead letters are acknowledged; any other failure
  makes FastStream seek back and redeliver the batch (point ids are UUIDv5 of the image
  id, so replays overwrite). It reads the raw records, because a tombstone (null value)
  is a delete. A batch that changed the store then bumps the result-cache generation in
  Redis (:mod:`imgsim_indexer.cache`; a Redis failure is logged, never fails the batch).
- ``search``, ``lookup`` and ``status`` are request/reply responders: FastStream
  publishes the returned model to the request's ``reply_to`` topic with its
  ``correlation_id``. They take the raw message and validate its body themselves, so a
  malformed request gets an error reply (``bad_request``) instead of leaving the asker
  waiting for its timeout. A request past its deadline is dropped by raising
  ``AckMessage``, the one way to end a handler without FastStream publishing a reply.
- A search has exactly one of ``vector``, ``like_image_id`` and ``positive`` examples; a
  search by id uses the stored vector of that image and leaves the image itself out of
  the hits; examples (vectors, or ids whose stored vectors are read) are combined by
  :func:`combine` and the images they name are left out.
- ``duplicates`` answers :class:`DuplicatesRequested` (:mod:`imgsim_indexer.duplicates`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from faststream import AckPolicy
from faststream.exceptions import AckMessage
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.subscriber.usecase import BatchSubscriber, DefaultSubscriber
from prometheus_client import Counter, Histogram
from pydantic import ValidationError
from redis.asyncio import Redis

from imgsim_core.contracts import (
    DuplicatesReplied,
    DuplicatesRequested,
    Example,
    ImageRecord,
    IndexerStatus,
    LookupRequested,
    ReindexRequested,
    ReindexStatus,
    SearchHit,
    SearchReplied,
    StatusRequested,
    Vector,
    VectorSearchRequested,
    pack_vector,
    unpack_vector,
)
from imgsim_core.errors import ErrorCode
from imgsim_core.kafka import now_ms, past_deadline, produce_all, safe_batch_parser
from imgsim_core.tracing import batch_step
from imgsim_indexer.cache import bump_generation, generation_key
from imgsim_indexer.duplicates import find_duplicates
from imgsim_indexer.errors import (
    NotStartedError,
    ReindexRefusedError,
    RequestError,
    StoreError,
)
from imgsim_indexer.operations import plan_batch
from imgsim_indexer.reindex import Reindexer
from imgsim_indexer.settings import IndexerSettings
from imgsim_indexer.store import Hit, VectorStore

log = logging.getLogger(__name__)

UPSERTED = Counter("imgsim_indexer_points_upserted", "Points upserted into the vector store.")
DELETED = Counter("imgsim_indexer_points_deleted", "Points deleted from the vector store.")
DEADLETTERS = Counter(
    "imgsim_indexer_deadletters", "Vector records sent to the dead-letter topic.", ["reason"]
)
UPSERT_SECONDS = Histogram(
    "imgsim_indexer_upsert_batch_seconds", "Time to apply one batch of writes to the store."
)
SEARCHES = Counter("imgsim_indexer_searches", "Vector searches answered, by outcome.", ["outcome"])
LOOKUPS = Counter("imgsim_indexer_lookups", "Image lookups answered, by outcome.", ["outcome"])
DUPLICATE_PAGES = Counter(
    "imgsim_indexer_duplicate_pages", "Duplicate pages answered, by outcome.", ["outcome"]
)


@dataclass(slots=True)
class IndexerState:
    """What the handlers use; the app's lifespan opens the store and sets the clients."""

    store: VectorStore  # replaced by a reindex when it switches the alias
    deadletter_producer: AIOKafkaProducer | None = None
    redis: Redis | None = None  # None: no generation bumps (tests without Redis)
    bump_owed: bool = False  # a bump failed (Redis down): retried with the next batch
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one live batch at a time
    positions: dict[TopicPartition, int] = field(default_factory=dict)
    reindexer: Reindexer | None = None
    model_id: str = ""  # the model whose vectors the live collection holds
    skip_models: set[str] = field(default_factory=set)  # other models' vectors: not letters
    previous: dict[str, VectorStore] = field(default_factory=dict)  # model → old collection
    vectors: BatchSubscriber | None = None  # the live consumer (its partitions, for a reindex)

    def store_for(self, model_id: str | None) -> VectorStore | None:
        """The collection that holds vectors of ``model_id`` (None: the live one)."""
        if model_id is None or model_id == self.model_id:
            return self.store
        return self.previous.get(model_id)

    def applied(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            self.positions[tp] = max(self.positions.get(tp, 0), record.offset + 1)

    def held(self) -> tuple[set[int], set[int] | None]:
        """Partitions of the vectors topic the live consumer holds, and all of them."""
        consumer = None if self.vectors is None else self.vectors.consumer
        if consumer is None or not consumer.subscription():
            return set(), None
        (topic,) = consumer.subscription()
        held = {tp.partition for tp in consumer.assignment() if tp.topic == topic}
        return held, consumer.partitions_for_topic(topic)

    @property
    def producer(self) -> AIOKafkaProducer:
        if self.deadletter_producer is None:
            raise NotStartedError("the dead-letter producer is not started")
        return self.deadletter_producer


def combine(positive: Sequence[tuple[Vector, float]], negative: Sequence[tuple[Vector, float]]
            ) -> Vector:  # fmt: skip
    """Qdrant's recommend "average_vector": weighted means P and N, query P + (P − N)."""
    mean_p = _weighted_mean(positive)
    query = mean_p if not negative else 2 * mean_p - _weighted_mean(negative)
    norm = float(np.linalg.norm(query))
    if not np.isfinite(norm) or norm < 1e-6:
        raise RequestError(ErrorCode.BAD_REQUEST, "the examples cancel out: no direction is left")
    return (query / norm).astype(np.float32)


def _weighted_mean(examples: Sequence[tuple[Vector, float]]) -> Vector:
    total = sum(weight for _, weight in examples)
    mean: Vector = np.sum([vector * weight for vector, weight in examples], axis=0) / total
    return mean


def _hit(hit: Hit) -> SearchHit:
    vector = None if hit.vector is None else pack_vector(hit.vector)
    return SearchHit(image_id=hit.image_id, score=hit.score, metadata=hit.metadata, vector=vector)


def invalid(exc: ValidationError) -> str:
    """A short reason for a request body that failed validation."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return f"invalid request ({exc.error_count()} errors), {where}: {first['msg']}"


def build_router(settings: IndexerSettings, state: IndexerState) -> KafkaRouter:
    router = KafkaRouter()
    kafka = settings.kafka
    topics = kafka.topics
    state.model_id = state.model_id or settings.model.model_id

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
            title=name,
            description=description,
        )

    vectors = state.vectors = router.subscriber(
        topics.vectors,
        batch=True,
        group_id=settings.group_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        parser=safe_batch_parser,
        max_records=kafka.bulk_max_records,
        fetch_max_wait_ms=kafka.bulk_fetch_max_wait_ms,
        **kafka.membership,
        title="index-vectors",
        description="Upserts ImageEmbedded vectors; a null value (tombstone) deletes.",
    )

    @vectors
    async def index_vectors(message: KafkaMessage) -> None:
        raw = message.raw_message
        records: tuple[ConsumerRecord[bytes, bytes], ...] = (
            raw if isinstance(raw, tuple) else (raw,)
        )
        plan = plan_batch(
            records,
            dim=settings.dim,
            model_id=state.model_id,
            deadletter_topic=topics.deadletter,
            now=datetime.now(UTC),
            skip_models=state.skip_models,
            max_metadata_bytes=settings.limits.max_metadata_bytes,
        )
        async with state.lock:  # a reindex switches the alias between two batches only
            with UPSERT_SECONDS.time(), batch_step("store write", upserts=len(plan.upserts)):
                await state.store.delete(plan.deletes)
                await state.store.upsert(plan.upserts)
                for old_model, old_store in state.previous.items():
                    # After a model change, the old model's collection stays current.
                    kept = plan_batch(
                        records, dim=settings.dim, model_id=old_model,
                        deadletter_topic=topics.deadletter, now=datetime.now(UTC),
                        dead_letters=False,
                        max_metadata_bytes=settings.limits.max_metadata_bytes,
                    )  # fmt: skip
                    await old_store.delete(kept.deletes)
                    await old_store.upsert(kept.upserts)
            state.applied(records)
        if plan.dead_letters:
            await produce_all(state.producer, plan.dead_letters)
        UPSERTED.inc(len(plan.upserts))
        DELETED.inc(len(plan.deletes))
        for code in plan.dead_letter_codes:
            DEADLETTERS.labels(code).inc()
        if state.redis is not None and (plan.upserts or plan.deletes or state.bump_owed):
            bumped = await bump_generation(
                state.redis, generation_key(kafka.topic_prefix), timeout_s=settings.redis.timeout_s
            )
            state.bump_owed = bumped is None
        log.debug(
            "batch of %d: %d upserted, %d deleted, %d dead letters",
            len(records),
            len(plan.upserts),
            len(plan.deletes),
            len(plan.dead_letters),
        )

    def checked(packed: str) -> Vector:
        try:
            vector = unpack_vector(packed)
        except ValueError as exc:
            raise RequestError(ErrorCode.BAD_VECTOR, "the vector is not base64 of float32") from exc
        if vector.shape != (settings.dim,):
            raise RequestError(
                ErrorCode.WRONG_DIM,
                f"the vector has dim {vector.size}, the index holds dim {settings.dim}",
            )
        return vector

    async def stored_vector(image_id: str, store: VectorStore) -> Vector:
        stored = await store.get_vector(image_id)
        if stored is None:
            raise RequestError(ErrorCode.NOT_FOUND, f"image {image_id} is not indexed")
        return stored

    async def example_vector(example: Example, store: VectorStore) -> tuple[Vector, float]:
        if example.vector is not None:
            return checked(example.vector), example.weight
        if example.image_id is not None:
            return await stored_vector(example.image_id, store), example.weight
        raise RequestError(
            ErrorCode.BAD_REQUEST, "an example reaches the indexer as a vector or an id"
        )

    async def query_vector(
        request: VectorSearchRequested, store: VectorStore
    ) -> tuple[Vector, tuple[str, ...]]:
        """The vector to search with, and the image ids to leave out."""
        given = (request.vector, request.like_image_id, request.positive or None)
        if sum(part is not None for part in given) != 1:
            raise RequestError(
                ErrorCode.BAD_REQUEST,
                "give exactly one of vector, like_image_id and positive examples",
            )
        if request.negative and not request.positive:
            raise RequestError(ErrorCode.BAD_REQUEST, "negative examples need positive ones")
        if request.like_image_id is not None:
            return await stored_vector(request.like_image_id, store), (request.like_image_id,)
        if request.positive:
            positive = [await example_vector(e, store) for e in request.positive]
            negative = [await example_vector(e, store) for e in request.negative]
            named = (*request.positive, *request.negative)
            return combine(positive, negative), tuple(e.image_id for e in named if e.image_id)
        return checked(request.vector or ""), ()

    @responder(
        topics.searches, "search", "VectorSearchRequested JSON → SearchReplied (to reply_to)."
    )
    async def search(message: KafkaMessage) -> SearchReplied:
        if past_deadline(message.headers):  # before parsing: a stale request costs nothing
            SEARCHES.labels("expired").inc()
            raise AckMessage()
        try:
            request = VectorSearchRequested.model_validate_json(message.body)
        except ValidationError as exc:
            SEARCHES.labels("bad_request").inc()
            return SearchReplied(error=invalid(exc), error_code=ErrorCode.BAD_REQUEST)
        if request.deadline_ms < now_ms():
            log.debug("dropped a search %d ms past its deadline", now_ms() - request.deadline_ms)
            SEARCHES.labels("expired").inc()
            raise AckMessage()  # no reply: nobody waits for it any more
        # A query vector of the model a reindex switched away from searches the collection
        # of that model (kept until dropped), so a model change never mixes vector spaces.
        store = state.store_for(request.model_id if request.vector is not None else None)
        if store is None:
            SEARCHES.labels("wrong_model").inc()
            return SearchReplied(
                error=f"the query vector comes from model {request.model_id!r}; the index "
                f"holds {state.model_id!r}",
                error_code=ErrorCode.WRONG_MODEL,
            )
        try:
            vector, exclude = await query_vector(request, store)
            hits = await store.search(
                vector,
                top_k=request.top_k,
                threshold=request.threshold,
                with_metadata=request.include_metadata,
                filter=request.filter,
                exclude=exclude,
                with_vectors=request.include_vectors,
            )
        except RequestError as exc:
            SEARCHES.labels(exc.code).inc()
            return SearchReplied(error=exc.message, error_code=exc.code)
        except StoreError as exc:
            log.warning("search failed: %s", exc)
            SEARCHES.labels("store_error").inc()
            return SearchReplied(error=str(exc), error_code=ErrorCode.STORE_ERROR)
        SEARCHES.labels("ok").inc()
        return SearchReplied(
            hits=[_hit(h) for h in hits],
            # Echoed so the gateway can cache the embedding the embedder computed.
            query_vector=request.vector,
            model_id=request.model_id if request.vector is not None else None,
        )

    @responder(topics.lookups, "lookup", "LookupRequested JSON → ImageRecord (to reply_to).")
    async def lookup(message: KafkaMessage) -> ImageRecord:
        if past_deadline(message.headers):
            LOOKUPS.labels("expired").inc()
            raise AckMessage()
        try:
            request = LookupRequested.model_validate_json(message.body)
        except ValidationError as exc:
            LOOKUPS.labels("bad_request").inc()
            return ImageRecord(image_id="", found=False, error=f"bad_request: {invalid(exc)}")
        if request.deadline_ms < now_ms():
            LOOKUPS.labels("expired").inc()
            raise AckMessage()
        try:
            stored = await state.store.get(request.image_id)
            vector = (
                await state.store.get_vector(request.image_id)
                if stored is not None and request.include_vector
                else None
            )
        except StoreError as exc:
            log.warning("lookup failed: %s", exc)
            LOOKUPS.labels("store_error").inc()
            return ImageRecord(image_id=request.image_id, found=False, error=str(exc))
        LOOKUPS.labels("found" if stored else "not_found").inc()
        if stored is None:
            return ImageRecord(image_id=request.image_id, found=False)
        return ImageRecord(
            image_id=stored.image_id,
            found=True,
            model_id=stored.model_id,
            metadata=stored.metadata,
            indexed_at=stored.indexed_at,
            source_partition=stored.source_partition,
            source_offset=stored.source_offset,
            content_sha256=stored.content_sha256,
            vector=None if vector is None else pack_vector(vector),
        )

    @responder(topics.duplicates, "duplicates", "DuplicatesRequested JSON → DuplicatesReplied.")
    async def duplicates(message: KafkaMessage) -> DuplicatesReplied:
        if past_deadline(message.headers):
            DUPLICATE_PAGES.labels("expired").inc()
            raise AckMessage()
        try:
            request = DuplicatesRequested.model_validate_json(message.body)
        except ValidationError as exc:
            DUPLICATE_PAGES.labels("bad_request").inc()
            return DuplicatesReplied(error=invalid(exc), error_code=ErrorCode.BAD_REQUEST)
        if request.deadline_ms < now_ms():
            DUPLICATE_PAGES.labels("expired").inc()
            raise AckMessage()
        try:
            reply = await find_duplicates(state.store, request)
        except RequestError as exc:
            DUPLICATE_PAGES.labels(exc.code).inc()
            return DuplicatesReplied(error=exc.message, error_code=exc.code)
        except StoreError as exc:
            log.warning("duplicates failed: %s", exc)
            DUPLICATE_PAGES.labels("store_error").inc()
            return DuplicatesReplied(error=str(exc), error_code=ErrorCode.STORE_ERROR)
        DUPLICATE_PAGES.labels("ok").inc()
        return reply

    @responder(topics.status, "status", "StatusRequested JSON → IndexerStatus (to reply_to).")
    async def status(message: KafkaMessage) -> IndexerStatus:
        if past_deadline(message.headers):
            raise AckMessage()
        error: str | None = None
        try:
            request = StatusRequested.model_validate_json(message.body)
        except ValidationError as exc:
            error = f"bad_request: {invalid(exc)}"  # the status is still worth answering
        else:
            if request.deadline_ms < now_ms():
                raise AckMessage()
        store = state.store
        try:
            indexed, ready = await store.count(), True
        except StoreError as exc:
            indexed, ready, error = 0, False, str(exc)
        return IndexerStatus(
            ready=ready,
            store=store.name,
            collection=store.collection,
            indexed=indexed,
            model_id=state.model_id,
            started_at=state.started_at,
            error=error,
        )

    @responder(
        topics.admin, "admin", "ReindexRequested JSON (start, status, drop_old) → ReindexStatus."
    )
    async def admin(message: KafkaMessage) -> ReindexStatus:
        if past_deadline(message.headers):
            raise AckMessage()
        store = state.store
        try:
            request = ReindexRequested.model_validate_json(message.body)
        except ValidationError as exc:
            return ReindexStatus(
                state="failed", collection=store.collection, error=f"bad_request: {invalid(exc)}"
            )
        if request.deadline_ms < now_ms():
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
