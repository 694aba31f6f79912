"""Gateway pieces that need no broker: settings, schemas, OpenAPI, body limit."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from imgsim_core.errors import CLIENT_FAULTS, IMAGE_FAULTS, ErrorCode
from imgsim_gateway import image_routes, routes, search_routes
from imgsim_gateway.api import JSONRoute
from imgsim_gateway.app import BodyGuard, create_app
from imgsim_gateway.checks import decode_base64
from imgsim_gateway.errors import BadRequestError
from imgsim_gateway.indexer import reply_error
from imgsim_gateway.schemas import IndexRequest, SearchRequest
from imgsim_gateway.settings import GatewaySettings


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_KAFKA__BOOTSTRAP_SERVERS", "broker:29092")
    monkeypatch.setenv("GATEWAY_KAFKA__TOPIC_PREFIX", "acme.")
    monkeypatch.setenv("GATEWAY_LIMITS__MAX_BYTES", "2048")
    settings = GatewaySettings()
    assert settings.kafka.bootstrap_servers == "broker:29092"
    assert settings.kafka.topics.images == "acme.images"
    assert settings.max_body_bytes > 2048 * 4 // 3


def test_invalid_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "not-a-port")
    with pytest.raises(ValueError, match="port"):
        GatewaySettings()


def test_seed_request_shapes_are_accepted() -> None:
    IndexRequest.model_validate(
        {"image_data": "aGk=", "image_id": "unique_identifier",
         "metadata": {"tags": ["nature", "landscape"], "source": "user_upload"}}
    )  # fmt: skip
    search = SearchRequest.model_validate(
        {"image_data": "aGk=", "top_k": 10, "threshold": 0.7, "include_metadata": True}
    )
    assert (search.top_k, search.threshold) == (10, 0.7)


def test_decode_base64_rejects_garbage() -> None:
    assert decode_base64("aGk=") == b"hi"
    with pytest.raises(BadRequestError) as err:
        decode_base64("a*b")
    assert err.value.code == "invalid_base64"


def test_openapi_documents_the_seed_endpoints_and_errors() -> None:
    spec = create_app(GatewaySettings()).openapi()
    paths = spec["paths"]
    for path in ("/api/v1/index", "/api/v1/search", "/api/v1/health", "/api/v1/stats"):
        assert path in paths
    assert {"413", "422", "504"} <= set(paths["/api/v1/search"]["post"]["responses"])
    assert paths["/api/v1/index"]["post"]["responses"]["202"]


async def test_body_limit_rejects_before_reading() -> None:
    inner = FastAPI()
    read = []

    @inner.post("/x")
    async def x(body: dict[str, str]) -> dict[str, str]:
        read.append(body)
        return body

    app = BodyGuard(inner, max_bytes=10)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        small = await c.post("/x", json={"a": "b"})
        big = await c.post("/x", json={"a": "b" * 20})
    assert small.status_code == 200
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "payload_too_large"
    assert read == [{"a": "b"}]


def guarded_app(**guard: Any) -> tuple[BodyGuard, list[int]]:
    inner = FastAPI()
    read: list[int] = []

    @inner.post("/x")
    async def x(request: Request) -> dict[str, int]:
        read.append(len(await request.body()))
        return {"read": read[-1]}

    @inner.exception_handler(HTTPException)
    async def on_http_error(_: Request, exc: HTTPException) -> JSONResponse:  # as the gateway's
        code = getattr(exc, "code", "http_error")
        return JSONResponse({"error": {"code": code}}, status_code=exc.status_code)

    return BodyGuard(inner, **guard), read


async def test_a_chunked_body_over_the_limit_is_413_with_a_body() -> None:
    app, read = guarded_app(max_bytes=4 * 1024 * 1024)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):  # 64 MiB without a Content-Length
            yield b"x" * (1024 * 1024)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        big = await c.post("/x", content=chunks())
        small = await c.post("/x", content=b"x" * 1000)
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "payload_too_large"
    assert small.json() == {"read": 1000}
    assert read == [1000]


async def test_a_body_that_stops_arriving_is_408() -> None:
    app, read = guarded_app(max_bytes=1024 * 1024, chunk_timeout_s=0.3)

    async def stalls() -> AsyncIterator[bytes]:
        yield b"x" * 100  # then nothing, as a body shorter than its Content-Length
        await asyncio.sleep(30)
        yield b"never"

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        started = time.monotonic()
        stalled = await c.post("/x", content=stalls())
    assert stalled.status_code == 408
    assert stalled.json()["error"]["code"] == "request_timeout"
    assert time.monotonic() - started < 5
    assert read == []


async def test_gateway_serves_the_asyncapi_contract_for_its_prefix() -> None:
    settings = GatewaySettings.model_validate({"kafka": {"topic_prefix": "acme."}})
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        document = (await c.get("/asyncapi.json")).json()
        page = await c.get("/asyncapi")
    assert document["asyncapi"] == "3.0.0"
    assert document["channels"]["images"]["address"] == "acme.images"
    assert page.status_code == 200
    # The page renders the very document /asyncapi.json serves, keys and headers included.
    assert json.dumps(document) in page.text
    assert "<title>imgsim event contracts AsyncAPI</title>" in page.text


@pytest.mark.parametrize("code", list(ErrorCode))
def test_a_reply_error_is_a_4xx_exactly_when_it_is_the_clients_fault(code: ErrorCode) -> None:
    error = reply_error("refused", code, "search_failed")
    assert error.code == code
    assert (400 <= error.status_code < 500) == (code in CLIENT_FAULTS)
    if code in IMAGE_FAULTS and code is not ErrorCode.IMAGE_TOO_LARGE:
        assert error.status_code == 422


def test_a_reply_error_without_a_code_is_the_systems() -> None:
    error = reply_error("failed", None, "search_failed")
    assert (error.status_code, error.code) == (503, "search_failed")


class _Echoed(BaseModel):
    text: str
    number: float = 0


def _echo_app(route_class: type[APIRoute]) -> FastAPI:
    router = APIRouter(route_class=route_class)

    @router.post("/echo")
    async def echo(body: _Echoed) -> dict[str, Any]:
        return {
            "text": [ord(c) for c in body.text[:8]],
            "chars": len(body.text),
            "number": str(body.number),
        }

    app = FastAPI()
    app.include_router(router)
    return app


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"text": "' + b"QUJD" * 40_000 + b'", "number": 2}', id="large"),
        pytest.param('{"text": "é\\u00e9", "number": 1e400}'.encode(), id="escapes-and-inf"),
        pytest.param('{"text": "a"}'.encode("utf-16"), id="utf-16"),
        pytest.param(b'\xef\xbb\xbf{"text": "bom"}', id="utf-8-bom"),
        pytest.param(b'{"text": "\\ud800"}', id="lone-surrogate"),
        pytest.param(b'{"text": "a", "text": "b"}', id="duplicate-keys"),
        pytest.param(b'{"text": ', id="truncated"),
        pytest.param(b"[1, 2]", id="not-an-object"),
        pytest.param(b"", id="empty"),
    ],
)
async def test_json_route_answers_every_body_as_the_standard_route_does(body: bytes) -> None:
    answers = []
    for route_class in (JSONRoute, APIRoute):
        transport = httpx.ASGITransport(app=_echo_app(route_class))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            response = await c.post(
                "/echo", content=body, headers={"content-type": "application/json"}
            )
        answers.append((response.status_code, response.content))
    assert answers[0] == answers[1]


async def test_json_route_parses_a_valid_body_without_the_standard_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("json.loads was called for a valid body")

    monkeypatch.setattr(json, "loads", refuse)
    transport = httpx.ASGITransport(app=_echo_app(JSONRoute))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        response = await c.post("/echo", json={"text": "abc", "number": 3})
    assert response.status_code == 200
    assert response.content == b'{"text":[97,98,99],"chars":3,"number":"3.0"}'


def test_every_api_route_parses_json_bodies_with_pydantic_core() -> None:
    routers = (routes.open_router, routes.router, image_routes.router, search_routes.router)
    api = [r for router in routers for r in router.routes]
    assert len(api) > 10
    assert all(isinstance(r, JSONRoute) for r in api), [type(r).__name__ for r in api]
