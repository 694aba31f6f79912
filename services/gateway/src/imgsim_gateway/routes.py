"""The REST API under ``/api/v1``: the seed's endpoints plus the image lifecycle.

The routes live by what users do (:mod:`~imgsim_gateway.image_routes`,
:mod:`~imgsim_gateway.search_routes`); this module puts them under the prefix with the
API key and rate-limit checks, and holds statistics, reindex and health itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from aiokafka.errors import KafkaError
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi import status as http
from redis.asyncio import Redis
from redis.exceptions import RedisError

from imgsim_core import __version__
from imgsim_core.contracts import (
    ReindexStatus,
)
from imgsim_gateway import image_routes, search_routes
from imgsim_gateway.api import (
    API_PREFIX,
    PROTECTED,
    IndexerDep,
    JSONRoute,
    WritesDep,
    failures,
)
from imgsim_gateway.errors import GatewayError, UpstreamError
from imgsim_gateway.kafkastats import KafkaStats
from imgsim_gateway.schemas import (
    Health,
    Readiness,
    ReindexRequest,
    Stats,
    TopicLag,
)

log = logging.getLogger(__name__)

open_router = APIRouter(prefix=API_PREFIX, tags=["health"], route_class=JSONRoute)
router = APIRouter(prefix=API_PREFIX, dependencies=PROTECTED, route_class=JSONRoute)


def include_api(app: FastAPI) -> None:
    """Put every ``/api/v1`` router on ``app``, side by side (see :data:`PROTECTED`)."""
    for each in (open_router, image_routes.router, search_routes.router, router):
        app.include_router(each)


@router.get("/stats", response_model=Stats, responses=failures(503, 504), summary="Statistics")
async def stats(request: Request, indexer: IndexerDep) -> Stats:
    status = await indexer.status()
    kafka: KafkaStats = request.app.state.kafka_stats
    try:
        figures = await kafka.read()  # bounded by the Kafka send timeout
    except (TimeoutError, KafkaError) as exc:
        raise UpstreamError("Kafka does not answer; retry later") from exc
    return Stats(
        indexed_images=status.indexed,
        collection=status.collection,
        store=status.store,
        model_id=status.model_id,
        consumer_lag={t: TopicLag(group=g, lag=n) for t, (g, n) in figures.lag.items()},
        images_in_per_s=round(figures.rates[0], 2),
        images_out_per_s=round(figures.rates[1], 2),
        dead_letters=figures.dead_letters,
        searches_in_flight=indexer.in_flight,
        uptime_s=round(time.monotonic() - request.app.state.started, 1),
        cache=request.app.state.registry.cache_counts(),
    )


@router.post(
    "/admin/reindex", status_code=http.HTTP_202_ACCEPTED, response_model=ReindexStatus,
    responses=failures(503, 504), tags=["admin"],
    summary="Rebuild the index into a new collection and switch to it when caught up",
)  # fmt: skip
async def start_reindex(indexer: IndexerDep, body: ReindexRequest | None = None) -> ReindexStatus:
    """Searches keep being served from the current collection until the switch.

    With ``model_id`` the new collection holds that model's vectors, which an embedder
    running that model produces (see the README's *Reindex and replay*).
    """
    return await indexer.reindex("start", body.model_id if body else None)


@router.get(
    "/admin/reindex", response_model=ReindexStatus, responses=failures(503, 504), tags=["admin"],
    summary="Progress of the reindex: processed, total, rate, ETA",
)  # fmt: skip
async def reindex_status(indexer: IndexerDep) -> ReindexStatus:
    return await indexer.reindex("status")


@router.post(
    "/admin/reindex/drop-old", response_model=ReindexStatus, responses=failures(503, 504),
    tags=["admin"], summary="Drop the collections the alias no longer points at",
)  # fmt: skip
async def drop_old_collections(indexer: IndexerDep) -> ReindexStatus:
    return await indexer.reindex("drop_old")


@open_router.get("/health", response_model=Health, summary="Liveness")
async def health() -> Health:
    return Health(timestamp=datetime.now(UTC), version=__version__, services={"gateway": "healthy"})


@open_router.get(
    "/ready", response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Kafka is down: nothing can be accepted."}},
    summary="Readiness: Kafka; Redis or the vector store down is 'degraded'",
)  # fmt: skip
async def ready(
    request: Request, writes: WritesDep, indexer: IndexerDep, response: Response
) -> Readiness:
    """Writes need Kafka only, so a gateway is ready while Kafka is up: an indexer that is
    down or being redeployed (one replica with the embedded store) makes searches fail
    with 504 until it is back, but must not take every gateway out of service for writes.
    """
    cache: Redis = request.app.state.redis

    async def redis_ok() -> bool:
        try:
            return bool(await cache.ping())
        except (RedisError, OSError):
            return False

    async def store_ok() -> bool:
        try:
            return (await indexer.status()).ready
        except GatewayError:
            return False

    kafka, redis_up, store = await asyncio.gather(writes.kafka_ok(), redis_ok(), store_ok())
    checks = {
        "kafka": "up" if kafka else "down",
        "redis": "up" if redis_up else "down",
        "vector_store": "up" if store else "down",
    }
    if not kafka:
        response.status_code = http.HTTP_503_SERVICE_UNAVAILABLE
        return Readiness(status="not_ready", checks=checks)
    return Readiness(status="ready" if redis_up and store else "degraded", checks=checks)
