"""How a Kafka consumer service (the embedder, the indexer) becomes a FastStream app."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from faststream import FastStream
from faststream.kafka import KafkaBroker

from imgsim_core.heap import freeze_startup_heap
from imgsim_core.lag import ConsumerLag
from imgsim_core.liveness import Liveness
from imgsim_core.telemetry import READY_MESSAGE

log = logging.getLogger(__name__)


def consumer_app(
    broker: KafkaBroker,
    lifespan: Callable[[], AbstractAsyncContextManager[None]],
    liveness: Liveness,
    service: str,
) -> FastStream:
    """The app around ``broker``: ``lifespan`` opens the service's resources before the
    subscribers start; once they consume, the consumer-lag gauge and the liveness beat
    start (both stop at shutdown), the heap alive then is frozen out of the garbage
    collector (:mod:`imgsim_core.heap`), and the ready line is logged (``make up`` and the
    tests wait for it). ``liveness.middleware`` must be among the broker's middlewares."""
    lag = ConsumerLag(broker)
    app = FastStream(broker, lifespan=lifespan)
    app.after_startup(lag.start)
    app.on_shutdown(lag.stop)
    app.on_shutdown(liveness.stop)

    @app.after_startup
    async def beat() -> None:
        await liveness.start(broker)

    @app.after_startup
    async def announce() -> None:
        freeze_startup_heap()  # the model and the clients are loaded: see imgsim_core.heap
        log.info("%s: %s consuming", READY_MESSAGE, service)

    return app
