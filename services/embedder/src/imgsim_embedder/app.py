"""The app factory: a FastStream app whose lifespan opens and closes the heavy things.

Start-up order (FastStream runs the lifespan before it starts the broker, so nothing is
consumed before the model is ready): create the topics, start the preprocessing pool, load
the model off the event loop, start the micro-batcher and the idempotent ``acks=all``
producer of the images path, serve metrics. Shutdown runs in reverse after the broker has
stopped its subscribers (in-flight batches get ``graceful_timeout`` to finish; an
unfinished one is not committed and is redelivered). The queries path publishes through
the broker's own producer with the small latency linger.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from faststream import FastStream
from faststream.kafka import KafkaBroker

from imgsim_core.kafka import ensure_topics, make_producer, max_request_size
from imgsim_core.liveness import Liveness
from imgsim_core.service import consumer_app
from imgsim_core.telemetry import broker_logging, serve_metrics
from imgsim_core.tracing import kafka_middlewares
from imgsim_embedder.batcher import MicroBatcher
from imgsim_embedder.handlers import EmbedderState, StateHolder, build_router
from imgsim_embedder.model import load_encoder, pick_device
from imgsim_embedder.preprocessing import PreprocessPool
from imgsim_embedder.settings import EmbedderSettings

log = logging.getLogger(__name__)

KAFKA_TIMEOUT_S = 30.0
GRACEFUL_TIMEOUT_S = 15.0


@asynccontextmanager
async def open_state(
    settings: EmbedderSettings, liveness: Liveness | None = None
) -> AsyncIterator[EmbedderState]:
    """Everything the handlers need, opened in order and closed in reverse."""
    async with AsyncExitStack() as stack:
        async with asyncio.timeout(KAFKA_TIMEOUT_S):
            await ensure_topics(settings.kafka)
        pool = PreprocessPool(settings.preprocess_threads)
        stack.callback(pool.shutdown)
        encoder = await asyncio.to_thread(load_encoder, settings.model)
        batcher = MicroBatcher(
            encoder,
            settings.max_batch,
            settings.max_wait_ms,
            urgent_max_batch=settings.query_max_batch,
            urgent_wait_ms=settings.query_max_wait_ms,
            search_step_rows=settings.step_rows_while_searching(
                pick_device(settings.model.device).type == "cuda"
            ),
        )
        batcher.start()
        stack.push_async_callback(batcher.stop)
        kafka = settings.kafka
        producer = make_producer(
            kafka, linger_ms=kafka.bulk_linger_ms, batch_bytes=kafka.bulk_batch_bytes
        )
        async with asyncio.timeout(KAFKA_TIMEOUT_S):
            await producer.start()
        stack.push_async_callback(producer.stop)
        serve_metrics(settings.metrics_port, settings.metrics_host, liveness)
        log.info(
            "embedder ready: %s, batches of ≤%d rows, ≤%.0f ms wait",
            encoder.model_id,
            settings.max_batch,
            settings.max_wait_ms,
        )
        yield EmbedderState(encoder=encoder, batcher=batcher, pool=pool, producer=producer)
        log.info("embedder stopping")


def create_app(settings: EmbedderSettings) -> FastStream:
    holder = StateHolder()
    liveness = Liveness()
    broker = KafkaBroker(
        settings.kafka.bootstrap_servers,
        client_id="imgsim-embedder",
        linger_ms=settings.kafka.latency_linger_ms,
        graceful_timeout=GRACEFUL_TIMEOUT_S,
        middlewares=(*kafka_middlewares(), liveness.middleware),
        max_request_size=max_request_size(settings.kafka),
        **broker_logging(),
    )
    broker.include_router(build_router(settings, holder, broker))

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        async with open_state(settings, liveness) as state:
            holder.set(state)
            try:
                yield
            finally:
                holder.set(None)

    return consumer_app(broker, lifespan, liveness, "embedder")
