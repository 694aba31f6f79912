"""The indexer's app factory and lifespan.

The lifespan runs before the broker starts its subscribers and ends after they stopped:
it creates the topics (idempotent), opens the vector store (with its payload indexes),
starts the dead-letter producer, the Redis client (the result-cache generation, and the
watch that keeps it from going back) and the metrics endpoint, and closes them in
reverse order. Nothing that holds a connection lives at module level.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from faststream import FastStream
from faststream.kafka import KafkaBroker

from imgsim_core.kafka import ensure_topics, make_producer, max_request_size
from imgsim_core.liveness import Liveness
from imgsim_core.redisclient import generation_key, make_redis
from imgsim_core.service import consumer_app
from imgsim_core.settings import QdrantSettings
from imgsim_core.tasks import cancel_and_wait
from imgsim_core.telemetry import broker_logging, serve_metrics
from imgsim_core.tracing import kafka_middlewares
from imgsim_indexer.cache import RollbackWatch
from imgsim_indexer.edge_store import EdgeStore
from imgsim_indexer.errors import StoreConfigError
from imgsim_indexer.handlers import IndexerState, build_router
from imgsim_indexer.payload import PayloadIndexes
from imgsim_indexer.reindex import Reindexer
from imgsim_indexer.server_store import ServerStore
from imgsim_indexer.serving import Collections
from imgsim_indexer.settings import IndexerSettings
from imgsim_indexer.store import VectorStore

log = logging.getLogger(__name__)


def open_store(
    settings: QdrantSettings,
    dim: int,
    payload_indexes: PayloadIndexes | None = None,
    *,
    physical: str | None = None,
) -> VectorStore:
    """The server store when ``settings.url`` is set, else Qdrant Edge at ``settings.path``;
    ``physical`` opens that real collection instead of the one the alias names.

    Nothing is opened yet: call ``await store.open()`` (the app's lifespan does).
    """
    if settings.url:
        return ServerStore(settings, dim, payload_indexes=payload_indexes, physical=physical)
    return EdgeStore(settings, dim, payload_indexes=payload_indexes, physical=physical)


async def check_model(store: VectorStore, model_id: str) -> None:
    """Refuse to serve a collection of another model's vectors (e.g. after a model change,
    when ``INDEXER_MODEL__*`` still names the old model)."""
    stored = await store.sample_model()
    if stored is not None and stored != model_id:
        raise StoreConfigError(
            f"collection {store.collection} holds vectors of model {stored!r}, but "
            f"INDEXER_MODEL__* names {model_id!r}: set it to the collection's model "
            "(`imgsim reindex --model` is how to change models)"
        )


def create_app(settings: IndexerSettings) -> FastStream:
    store = open_store(settings.qdrant, settings.dim, settings.payload_indexes)
    collections = Collections(store, settings)

    def open_collection(physical: str) -> VectorStore:
        return open_store(
            settings.qdrant, settings.dim, settings.payload_indexes, physical=physical
        )

    reindexer = Reindexer(settings, collections, open_collection)
    state = IndexerState(collections, reindexer)
    liveness = Liveness()
    broker = KafkaBroker(
        settings.kafka.bootstrap_servers,
        middlewares=(*kafka_middlewares(), liveness.middleware),
        max_request_size=max_request_size(settings.kafka),  # replies carry metadata
        **broker_logging(),
    )
    broker.include_router(build_router(settings, state))

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        state.started_at = datetime.now(UTC)
        await ensure_topics(settings.kafka)
        await store.open()
        try:
            await check_model(store, settings.model.model_id)
            producer = make_producer(settings.kafka, linger_ms=settings.kafka.bulk_linger_ms)
            await producer.start()
            redis = make_redis(settings.redis)  # connects on first use; may be down
            state.rollback = RollbackWatch(
                generation_key(settings.kafka.topic_prefix), timeout_s=settings.redis.timeout_s
            )
            watch = asyncio.create_task(
                state.rollback.run(redis), name="imgsim-generation-rollback"
            )
            try:
                state.deadletter_producer = producer
                state.redis = redis
                serve_metrics(settings.metrics_port, settings.metrics_host, liveness)
                log.info(
                    "indexer ready: %s collection %s, model %s",
                    store.name,
                    store.collection,
                    settings.model.model_id,
                )
                yield
            finally:
                await cancel_and_wait(watch)
                state.deadletter_producer = None
                state.redis = None
                state.rollback = None
                await redis.aclose()
                await producer.stop()
        finally:
            await reindexer.stop()
            await collections.live.close()

    return consumer_app(broker, lifespan, liveness, "indexer")
