"""The gateway's app factory and lifespan.

The lifespan opens the heavy things once — the Kafka producer, this instance's reply
topic and its reader, the Redis pool — and closes them on shutdown. Domain errors become
HTTP responses here, in one place, with one body shape.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from imgsim_core import __version__
from imgsim_core.kafka import ensure_topics, make_producer
from imgsim_core.requestreply import Requester
from imgsim_gateway.errors import GatewayError
from imgsim_gateway.pipeline import Pipeline
from imgsim_gateway.routes import router
from imgsim_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


def error_response(status_code: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status_code)


class BodySizeLimit:
    """Rejects a body over the limit from its Content-Length, before reading it (413)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                response = error_response(
                    413,
                    "payload_too_large",
                    f"the body is {int(length)} bytes; the limit is {self.max_bytes}",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
        )
        redis = Redis.from_url(
            settings.redis.url,
            socket_timeout=settings.redis.timeout_s,
            socket_connect_timeout=settings.redis.timeout_s,
        )
        try:
            await requester.start()
            app.state.pipeline = Pipeline(settings, producer, requester)
            app.state.redis = redis
            log.info("gateway ready; replies on %s", requester.reply_topic)
            yield
        finally:
            await requester.stop()
            await producer.stop()
            await redis.aclose()

    app = FastAPI(
        title="imgsim",
        version=__version__,
        description="Image similarity search over Kafka, CLIP and Qdrant.",
        lifespan=lifespan,
    )
    app.include_router(router)

    @app.exception_handler(GatewayError)
    async def on_gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        if exc.status_code >= 500:
            log.warning("%s: %s", exc.code, exc.message)
        return error_response(exc.status_code, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'] if p != 'body')}: {err['msg']}"
            for err in exc.errors()
        )
        return error_response(422, "validation_error", problems or "invalid request")

    @app.exception_handler(HTTPException)
    async def on_http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, "http_error", str(exc.detail))

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app
