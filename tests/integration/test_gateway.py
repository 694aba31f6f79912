"""The gateway in-process against a real broker and Redis: what it produces, how it fails."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from imgsim_core.settings import ImageLimits, KafkaSettings, RedisSettings
from imgsim_gateway.app import create_app
from imgsim_gateway.settings import GatewaySettings
from tests.conftest import Services
from tests.imagegen import make_image

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
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
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
