"""The indexer's app factory and lifespan.

The lifespan runs before the broker starts its subscribers and ends after they stopped:
it creates the topics (idempotent), opens the vector store (with its payload indexes),
starts the dead-letter producer, the Redis client (the result-cache generation) and the
metrics endpoint, and closes them in reverse order. Nothing that holds a connection
lives at module level.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from faststream import FastStream
from faststream.kafka import KafkaBroker

from imgsim_core.kafka import ensure_topics, make_producer
from imgsim_core.lag import ConsumerLag
from imgsim_core.telemetry import READY_MESSAGE, serve_metrics
from imgsim_core.tracing import kafka_middlewares
from imgsim_indexer.cache import make_redis
from imgsim_indexer.handlers import IndexerState, build_router
from imgsim_indexer.reindex import Reindexer
from imgsim_indexer.settings import IndexerSettings
from imgsim_indexer.store import open_store

log = logging.getLogger(__name__)


def create_app(settings: IndexerSettings) -> FastStream:
    state = IndexerState(store=open_store(settings.qdrant, settings.dim, settings.payload_indexes))
    reindexer = state.reindexer = Reindexer(settings, state)
    broker = KafkaBroker(settings.kafka.bootstrap_servers, middlewares=kafka_middlewares())
    broker.include_router(build_router(settings, state))
    lag = ConsumerLag(broker)

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        state.started_at = datetime.now(UTC)
        await ensure_topics(settings.kafka)
        await state.store.open()
        try:
            producer = make_producer(settings.kafka, linger_ms=settings.kafka.bulk_linger_ms)
            await producer.start()
            redis = make_redis(settings.redis)  # connects on first use; may be down
            try:
                state.deadletter_producer = producer
                state.redis = redis
                serve_metrics(settings.metrics_port, settings.metrics_host)
                log.info(
                    "indexer ready: %s collection %s, model %s",
                    state.store.name,
                    state.store.collection,
                    settings.model.model_id,
                )
                yield
            finally:
                state.deadletter_producer = None
                state.redis = None
                await redis.aclose()
                await producer.stop()
        finally:
            await reindexer.stop()
            await state.store.close()

    app = FastStream(broker, lifespan=lifespan)
    app.after_startup(lag.start)
    app.on_shutdown(lag.stop)

    @app.after_startup
    async def announce() -> None:
        log.info("%s: indexer consuming", READY_MESSAGE)

    return app
