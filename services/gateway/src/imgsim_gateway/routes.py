"""The REST API under ``/api/v1`` (the seed's endpoints and shapes)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from redis.asyncio import Redis
from redis.exceptions import RedisError

from imgsim_gateway.errors import GatewayError
from imgsim_gateway.pipeline import Pipeline, decode_base64
from imgsim_gateway.schemas import (
    ErrorBody,
    Health,
    IndexAccepted,
    IndexRequest,
    Readiness,
    SearchRequest,
    SearchResponse,
    SearchResult,
    Stats,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1")

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Bad input: invalid base64, metadata too large, ...",
        413: "The body or the image is over its size limit.",
        422: "The image is corrupt or of a format not allowed, or a field is invalid.",
        503: "Kafka or a service behind the gateway is unavailable.",
        504: "No answer before the deadline.",
    }.items()
}


def pipeline(request: Request) -> Pipeline:
    result: Pipeline = request.app.state.pipeline
    return result


def redis(request: Request) -> Redis:
    result: Redis = request.app.state.redis
    return result


PipelineDep = Annotated[Pipeline, Depends(pipeline)]
RedisDep = Annotated[Redis, Depends(redis)]


@router.post(
    "/index",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=IndexAccepted,
    responses=_ERRORS,
    summary="Index an image (base64 JSON)",
)
async def index_image(body: IndexRequest, pipe: PipelineDep) -> IndexAccepted:
    """Queue the image for embedding and indexing; it is durable in Kafka when this answers."""
    await pipe.submit_image(body.image_id, decode_base64(body.image_data), body.metadata)
    return IndexAccepted(image_id=body.image_id)


@router.post("/search", response_model=SearchResponse, responses=_ERRORS, summary="Search by image")
async def search(body: SearchRequest, pipe: PipelineDep) -> SearchResponse:
    """The indexed images most similar to the query image, best first."""
    started = time.perf_counter()
    hits = await pipe.search_image(
        decode_base64(body.image_data),
        top_k=body.top_k,
        threshold=body.threshold,
        include_metadata=body.include_metadata,
    )
    return SearchResponse(
        results=[
            SearchResult(image_id=h.image_id, score=h.score, metadata=h.metadata) for h in hits
        ],
        took_ms=round((time.perf_counter() - started) * 1000, 2),
    )


@router.get("/health", response_model=Health, summary="Liveness")
async def health() -> Health:
    return Health(status="ok")


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency is down."}},
    summary="Readiness: Kafka, Redis and the vector store",
)
async def ready(pipe: PipelineDep, cache: RedisDep, response: Response) -> Readiness:
    async def redis_ok() -> bool:
        try:
            return bool(await cache.ping())
        except (RedisError, OSError):
            return False

    async def store_ok() -> bool:
        try:
            return (await pipe.status()).ready
        except GatewayError:
            return False

    kafka, redis_up, store = await asyncio.gather(pipe.kafka_ok(), redis_ok(), store_ok())
    checks = {
        "kafka": "up" if kafka else "down",
        "redis": "up" if redis_up else "down",
        "vector_store": "up" if store else "down",
    }
    ok = kafka and redis_up and store
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(status="ready" if ok else "not_ready", checks=checks)


@router.get("/stats", response_model=Stats, responses=_ERRORS, summary="Index statistics")
async def stats(pipe: PipelineDep) -> Stats:
    indexer = await pipe.status()
    return Stats(
        indexed_images=indexer.indexed,
        collection=indexer.collection,
        store=indexer.store,
        searches_in_flight=pipe.searches_in_flight,
    )
