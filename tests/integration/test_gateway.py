"""The gateway in-process against a real broker and Redis: what it produces, how it fails."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr

from imgsim_core.settings import ImageLimits, KafkaSettings, RedisSettings
from imgsim_devstack.processes import free_port
from imgsim_gateway.settings import GatewaySettings
from tests.conftest import Services, in_process_gateway
from tests.imagegen import make_image, png_bomb

pytestmark = pytest.mark.integration


@pytest.fixture
async def gateway(infra: Services, topic_prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = GatewaySettings(
        kafka=KafkaSettings(bootstrap_servers=infra.bootstrap, topic_prefix=topic_prefix),
        redis=RedisSettings(url=infra.redis_url),
        limits=ImageLimits(max_bytes=200_000),
        search_timeout_s=1.0,
        status_timeout_s=0.5,
    )
    async with in_process_gateway(settings) as client:
        client.settings = settings  # type: ignore[attr-defined]
        yield client


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_index_produces_the_raw_image_keyed_by_id(gateway: httpx.AsyncClient) -> None:
    image = make_image(1, fmt="JPEG")
    response = await gateway.post(
        "/api/v1/index",
        json={"image_data": b64(image), "image_id": "cats/1.jpg", "metadata": {"tags": ["cat"]}},
    )
    assert response.status_code == 202
    assert response.json() == {"image_id": "cats/1.jpg", "status": "accepted"}

    settings: GatewaySettings = gateway.settings  # type: ignore[attr-defined]
    consumer = AIOKafkaConsumer(
        settings.kafka.topics.images,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert record.key == b"cats/1.jpg"
    assert record.value == image
    headers = dict(record.headers)
    assert json.loads(headers["metadata"]) == {"tags": ["cat"]}
    assert headers["content-type"] == b"image/jpeg"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"image_data": "not base64!", "image_id": "a"}, 400, "invalid_base64"),
        ({"image_data": b64(b"GIF89a" + b"\0" * 20), "image_id": "a"}, 422, "corrupt_image"),
        ({"image_data": b64(b"%PDF-1.7 hello"), "image_id": "a"}, 422, "unsupported_format"),
        ({"image_data": b64(png_bomb(100_000, 100_000)), "image_id": "a"}, 422, "too_many_pixels"),
        ({"image_data": b64(make_image(2)[:200]), "image_id": "a"}, 422, "corrupt_image"),
        ({"image_data": b64(make_image(2)), "image_id": ""}, 422, "validation_error"),
        ({"image_data": b64(make_image(2)), "image_id": "a\nb"}, 422, "validation_error"),
        ({"image_data": b64(make_image(2)), "image_id": "x" * 257}, 422, "validation_error"),
        ({"image_data": b64(make_image(2)), "image_id": "a", "metadata": [1]},
         422, "validation_error"),
        ({"image_data": b64(make_image(2)), "image_id": "a", "metadata": {"k": "v" * 20000}},
         400, "metadata_too_large"),
    ],
)  # fmt: skip
async def test_bad_index_input_gets_a_clear_4xx(
    gateway: httpx.AsyncClient, body: dict[str, object], status: int, code: str
) -> None:
    response = await gateway.post("/api/v1/index", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]


async def test_oversized_body_is_rejected_from_content_length(gateway: httpx.AsyncClient) -> None:
    settings: GatewaySettings = gateway.settings  # type: ignore[attr-defined]
    response = await gateway.post(
        "/api/v1/index",
        content=b"{" + b" " * (settings.max_body_bytes + 1) + b"}",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("top_k", [0, 101])
async def test_top_k_out_of_range_is_422(gateway: httpx.AsyncClient, top_k: int) -> None:
    response = await gateway.post(
        "/api/v1/search", json={"image_data": b64(make_image(3)), "top_k": top_k}
    )
    assert response.status_code == 422
    assert "top_k" in response.json()["error"]["message"]


async def test_search_without_a_pipeline_times_out_with_504(gateway: httpx.AsyncClient) -> None:
    response = await gateway.post("/api/v1/search", json={"image_data": b64(make_image(3))})
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"


async def test_health_and_readiness_without_an_indexer(gateway: httpx.AsyncClient) -> None:
    assert (await gateway.get("/api/v1/health")).json() == {"status": "ok"}
    ready = await gateway.get("/api/v1/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"kafka": "up", "redis": "up", "vector_store": "down"}


@pytest.fixture
async def secured(infra: Services, topic_prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = GatewaySettings(
        kafka=KafkaSettings(bootstrap_servers=infra.bootstrap, topic_prefix=topic_prefix),
        redis=RedisSettings(url=infra.redis_url),
        api_keys=SecretStr("alpha, beta"),
        rate_limit="3/minute",
        cors_origins=["https://app.example.com"],
        status_timeout_s=0.3,
    )
    async with in_process_gateway(settings) as client:
        yield client


async def test_api_keys_are_required_when_set(secured: httpx.AsyncClient) -> None:
    body = {"image_data": b64(make_image(5)), "image_id": "k"}
    missing = await secured.post("/api/v1/index", json=body)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    wrong = await secured.post("/api/v1/index", json=body, headers={"X-API-Key": "gamma"})
    assert wrong.status_code == 401
    by_header = await secured.post("/api/v1/index", json=body, headers={"X-API-Key": "alpha"})
    assert by_header.status_code == 202
    bearer = await secured.post(
        "/api/v1/index", json=body, headers={"Authorization": "Bearer beta"}
    )
    assert bearer.status_code == 202
    assert (await secured.get("/api/v1/health")).status_code == 200  # health stays open


async def test_rate_limit_per_key_with_retry_after(secured: httpx.AsyncClient) -> None:
    body = {"image_data": b64(make_image(6)), "image_id": "r"}
    codes = [
        (await secured.post("/api/v1/index", json=body, headers={"X-API-Key": "alpha"})).status_code
        for _ in range(4)
    ]
    assert codes == [202, 202, 202, 429]
    limited = await secured.post("/api/v1/index", json=body, headers={"X-API-Key": "alpha"})
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    other = await secured.post("/api/v1/index", json=body, headers={"X-API-Key": "beta"})
    assert other.status_code == 202  # limits are per caller


async def test_rate_limit_lets_requests_through_when_redis_is_down(
    infra: Services, topic_prefix: str
) -> None:
    settings = GatewaySettings(
        kafka=KafkaSettings(bootstrap_servers=infra.bootstrap, topic_prefix=topic_prefix),
        redis=RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2),
        rate_limit="1/hour",
    )
    async with in_process_gateway(settings) as client:
        body = {"image_data": b64(make_image(7)), "image_id": "x"}
        for _ in range(3):
            assert (await client.post("/api/v1/index", json=body)).status_code == 202


async def test_cors_allows_only_configured_origins(secured: httpx.AsyncClient) -> None:
    preflight = {"Access-Control-Request-Method": "POST"}
    allowed = await secured.options(
        "/api/v1/search", headers={"Origin": "https://app.example.com", **preflight}
    )
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    denied = await secured.options(
        "/api/v1/search", headers={"Origin": "https://evil.example", **preflight}
    )
    assert "access-control-allow-origin" not in denied.headers


async def test_wait_true_without_an_indexer_is_504_and_the_write_stays(
    infra: Services, topic_prefix: str
) -> None:
    settings = GatewaySettings(
        kafka=KafkaSettings(bootstrap_servers=infra.bootstrap, topic_prefix=topic_prefix),
        redis=RedisSettings(url=infra.redis_url),
        wait_timeout_s=1.0,
        status_timeout_s=0.3,
    )
    async with in_process_gateway(settings) as client:
        response = await client.post(
            "/api/v1/index?wait=true",
            json={"image_data": b64(make_image(8)), "image_id": "w"},
        )
    assert response.status_code == 504
    assert "will still be applied" in response.json()["error"]["message"]
    consumer = AIOKafkaConsumer(
        settings.kafka.topics.images, bootstrap_servers=infra.bootstrap,
        auto_offset_reset="earliest", group_id=None,
    )  # fmt: skip
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 10)
    finally:
        await consumer.stop()
    assert record.key == b"w"
