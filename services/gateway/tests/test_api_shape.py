"""Gateway pieces that need no broker: settings, schemas, OpenAPI, body limit."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from imgsim_gateway.app import BodySizeLimit, create_app
from imgsim_gateway.errors import BadRequestError
from imgsim_gateway.pipeline import decode_base64
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

    app = BodySizeLimit(inner, max_bytes=10)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        small = await c.post("/x", json={"a": "b"})
        big = await c.post("/x", json={"a": "b" * 20})
    assert small.status_code == 200
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "payload_too_large"
    assert read == [{"a": "b"}]


async def test_gateway_serves_the_asyncapi_contract_for_its_prefix() -> None:
    settings = GatewaySettings.model_validate({"kafka": {"topic_prefix": "acme."}})
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        document = (await c.get("/asyncapi.json")).json()
        page = await c.get("/asyncapi")
    assert document["asyncapi"] == "3.0.0"
    assert document["channels"]["images"]["address"] == "acme.images"
    assert page.status_code == 200
    assert "acme.images" in page.text
