"""The gateway's app factory and lifespan.

The lifespan opens the heavy things once — the Kafka producer, this instance's reply
topic and its reader, the Redis pool — and closes them on shutdown. Domain errors become
HTTP responses here, in one place, with one body shape.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from faststream.specification import Specification
from faststream.specification.asyncapi.site import get_asyncapi_html
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgsim_core import __version__
from imgsim_core.asyncapi import Completed, asyncapi_document
from imgsim_core.heap import freeze_startup_heap
from imgsim_core.kafka import Outage, ensure_topics, make_producer
from imgsim_core.redisclient import make_redis
from imgsim_core.requestreply import Requester
from imgsim_core.tasks import cancel_and_wait, pause
from imgsim_core.tracing import tracing_active
from imgsim_gateway.cache import GenerationWatch, SearchCache
from imgsim_gateway.checks import ImageChecks
from imgsim_gateway.content import ContentReader
from imgsim_gateway.errors import GatewayError
from imgsim_gateway.indexer import IndexerClient
from imgsim_gateway.kafkastats import KafkaStats
from imgsim_gateway.observability import Registry, instrument
from imgsim_gateway.routes import include_api
from imgsim_gateway.searching import Searches
from imgsim_gateway.settings import GatewaySettings
from imgsim_gateway.writes import Writes

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
# The page loads only its own script, style and images (thumbnails arrive as blob: URLs),
# so metadata that smuggles markup has nowhere to run.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def error_response(status_code: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status_code)


class BodyRefusedError(HTTPException):
    """Raised from the body stream; an HTTPException so that FastAPI passes it on as is."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(status_code, message)
        self.code = code


class BodyGuard:
    """Bounds what a request body may cost before any handler sees it.

    - Over the size limit: 413 from the Content-Length before reading, or, for a chunked
      body or one longer than it says, as soon as the bytes read pass the limit.
    - Each piece of the body must arrive within ``chunk_timeout_s``: a body shorter than
      its Content-Length or a trickle gets 408 instead of holding the connection.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        larger: dict[str, int] | None = None,
        chunk_timeout_s: float = 30.0,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.larger = larger or {}
        self.chunk_timeout_s = chunk_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(scope["path"], self.max_bytes)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            response = error_response(
                413, "payload_too_large", f"the body is {int(length)} bytes; the limit is {limit}"
            )
            await response(scope, receive, send)
            return
        read = 0
        complete = False
        started = False

        async def guarded_receive() -> Message:
            nonlocal read, complete
            if complete:  # after the body: disconnect notices, no bound
                return await receive()
            try:
                async with asyncio.timeout(self.chunk_timeout_s):
                    message = await receive()
            except TimeoutError:
                raise BodyRefusedError(
                    408, "request_timeout",
                    f"the body did not arrive within {self.chunk_timeout_s:.0f} s "
                    "(shorter than its Content-Length, or too slow)",
                ) from None  # fmt: skip
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if read > limit:
                    raise BodyRefusedError(
                        413, "payload_too_large", f"the body is over the limit of {limit} bytes"
                    )
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracked_send)
        except BodyRefusedError as refused:  # raised where no handler turned it into a response
            if started:
                raise
            response = error_response(refused.status_code, refused.code, str(refused.detail))
            await response(scope, receive, send)


def create_app(settings: GatewaySettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        kafka = settings.kafka
        await ensure_topics(kafka)
        producer = make_producer(kafka, linger_ms=kafka.latency_linger_ms)
        await producer.start()
        requester = Requester(
            producer,
            kafka.bootstrap_servers,
            kafka.topics.replies(uuid.uuid4().hex[:12]),
            fetch_max_wait_ms=kafka.latency_fetch_max_wait_ms,
            replication_factor=kafka.replication_factor,
            send_timeout_s=kafka.send_timeout_s,
            max_message_bytes=kafka.max_message_bytes,
            heartbeat_s=kafka.reply_heartbeat_s,
            orphans_of=kafka.topics.replies(),
            orphan_after_s=kafka.orphan_reply_after_s,
        )
        redis = make_redis(settings.redis)
        cache = SearchCache(
            redis,
            kafka.topic_prefix,
            result_ttl_s=settings.result_cache_ttl_s,
            embedding_ttl_s=settings.embedding_cache_ttl_s,
        )
        kafka_stats = KafkaStats(
            kafka,
            {
                kafka.topics.images: settings.embedder_group,
                kafka.topics.vectors: settings.indexer_group,
            },
        )
        generation = GenerationWatch(redis, cache.generation_key)
        checks = ImageChecks(settings.limits, settings.decode_budget_pixels)
        outage = Outage("Kafka", log)  # produce and request/reply fail together
        indexer = IndexerClient(settings, requester, outage)
        content = ContentReader(
            kafka, redis, checks.decoding, thumbnail_ttl_s=settings.thumbnail_cache_ttl_s
        )
        sampler: asyncio.Task[None] | None = None
        try:
            await requester.start()
            await kafka_stats.start()
            await content.start()
            sampler = asyncio.create_task(_sample_rates(kafka_stats), name="imgsim-rates")
            app.state.writes = Writes(settings, producer, checks, indexer, outage, generation)
            app.state.searches = Searches(settings, cache, checks, indexer)
            app.state.indexer = indexer
            app.state.content = content
            app.state.redis = redis
            app.state.kafka_stats = kafka_stats
            log.info("gateway ready; replies on %s", requester.reply_topic)
            freeze_startup_heap()
            yield
        finally:
            await cancel_and_wait(sampler)
            await generation.close()
            await content.stop()
            await kafka_stats.stop()
            await requester.stop()
            await producer.stop()
            await redis.aclose()

    app = FastAPI(
        title="imgsim",
        version=__version__,
        description="Image similarity search over Kafka, CLIP and Qdrant.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.started = time.monotonic()
    contract = asyncapi_document(settings.kafka.topics)

    @app.get("/asyncapi.json", tags=["contract"], summary="AsyncAPI document of the topics")
    async def asyncapi_json() -> dict[str, Any]:
        """Topics, keys, headers and payloads for producers and consumers on Kafka."""
        return contract

    @app.get("/asyncapi", tags=["contract"], response_class=HTMLResponse, include_in_schema=False)
    async def asyncapi_html() -> str:
        # FastStream's page reads only title and to_json() of its specification.
        return get_asyncapi_html(cast(Specification, Completed(contract)))

    include_api(app)
    app.mount("/ui", StaticFiles(directory=STATIC), name="ui")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        """The search page (static files in the gateway package; no build step)."""
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})

    @app.exception_handler(GatewayError)
    async def on_gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        if exc.status_code >= 500:
            log.warning("%s: %s", exc.code, exc.message)
        response = error_response(exc.status_code, exc.code, exc.message)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'] if p != 'body')}: {err['msg']}"
            for err in exc.errors()
        )
        types = {err["type"] for err in exc.errors()}
        if "json_invalid" in types:
            return error_response(400, "invalid_body", f"the body is not valid JSON: {problems}")
        if "invalid_metadata" in types:
            return error_response(400, "invalid_metadata", problems)
        return error_response(422, "validation_error", problems or "invalid request")

    @app.exception_handler(HTTPException)
    async def on_http_error(_: Request, exc: HTTPException) -> JSONResponse:
        if isinstance(exc, BodyRefusedError):
            return error_response(exc.status_code, exc.code, str(exc.detail))
        if exc.status_code == 400:  # FastAPI could not parse the body (nested too deep, ...)
            message = f"{exc.detail}: malformed, or JSON nested too deep to parse"
            return error_response(400, "invalid_body", message)
        return error_response(exc.status_code, "http_error", str(exc.detail))

    app.add_middleware(
        BodyGuard,
        max_bytes=settings.max_body_bytes,
        larger={"/api/v1/index/batch": settings.max_batch_body_bytes},
        chunk_timeout_s=settings.body_timeout_s,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    app.state.registry = Registry(processes=settings.workers)
    instrument(app, app.state.registry, traced=tracing_active())
    return app


async def _sample_rates(stats: KafkaStats, every_s: float = 10.0) -> None:
    """Sample topic end offsets so /stats can report recent rates."""
    while True:
        try:
            await stats.read()
        except Exception:  # a stats sample must never kill the gateway
            log.debug("sampling topic offsets failed", exc_info=True)
        await pause(every_s)
