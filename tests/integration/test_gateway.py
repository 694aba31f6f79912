"""The gateway in-process against a real broker and Redis: what it produces, how it fails."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from pydantic import SecretStr

from imgsim_core.settings import ImageLimits, KafkaSettings, RedisSettings
from imgsim_devstack.processes import free_port
from imgsim_gateway import security
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


async def first_image_record(settings: GatewaySettings) -> ConsumerRecord[bytes, bytes]:
    """The first record on the images topic of ``settings``."""
    consumer = AIOKafkaConsumer(
        settings.kafka.topics.images, bootstrap_servers=settings.kafka.bootstrap_servers,
        auto_offset_reset="earliest", group_id=None,
    )  # fmt: skip
    await consumer.start()
    try:
        return await asyncio.wait_for(consumer.getone(), 10)
    finally:
        await consumer.stop()


def nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def writes(metrics: str, kind: str) -> float:
    """The value of ``imgsim_gateway_writes_total{kind=...}`` in a /metrics page (0 if absent)."""
    prefix = f'imgsim_gateway_writes_total{{kind="{kind}"}} '
    lines = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


async def test_index_produces_the_raw_image_keyed_by_id(gateway: httpx.AsyncClient) -> None:
    image = make_image(1, fmt="JPEG")
    before = writes((await gateway.get("/metrics")).text, "image")
    response = await gateway.post(
        "/api/v1/index",
        json={"image_data": b64(image), "image_id": "cats/1.jpg", "metadata": {"tags": ["cat"]}},
    )
    assert response.status_code == 202
    body = response.json()
    assert (body["image_id"], body["status"], body["success"]) == ("cats/1.jpg", "accepted", True)
    assert body["message"]
    assert body["processing_time_ms"] >= 0
    # The accepted-images counter (the dashboard's ingest rate) counts acknowledged writes.
    assert writes((await gateway.get("/metrics")).text, "image") == before + 1

    settings: GatewaySettings = gateway.settings  # type: ignore[attr-defined]
    record = await first_image_record(settings)
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
        # The one id rule: what the embedder would dead-letter is refused here.
        *[({"image_data": b64(make_image(2)), "image_id": f"a{c}b"}, 422, "validation_error")
          for c in ("\u00a0", "\u200b", "\u202e", "\u0085")],
        *[({"image_data": b64(make_image(2)), "image_id": i}, 422, "validation_error")
          for i in ("a/../b", "../a", "a/./b", "a//b", "a/", "..")],
        ({"image_data": b64(make_image(2)), "image_id": "a", "metadata": {"x": float("nan")}},
         400, "invalid_metadata"),
        ({"image_data": b64(make_image(2)), "image_id": "a", "metadata": {"x": [float("inf")]}},
         400, "invalid_metadata"),
        ({"image_data": b64(make_image(2)), "image_id": "a", "metadata": {"x": nested(40)}},
         400, "invalid_metadata"),
        ({"image_data": b64(make_image(2)), "image_id": "a", "extra": 1}, 422, "validation_error"),
    ],
)  # fmt: skip
async def test_bad_index_input_gets_a_clear_4xx(
    gateway: httpx.AsyncClient, body: dict[str, object], status: int, code: str
) -> None:
    response = await gateway.post(  # json.dumps writes NaN and Infinity; httpx's json= refuses
        "/api/v1/index", content=json.dumps(body), headers={"content-type": "application/json"}
    )
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


async def test_good_ids_are_accepted_and_addressable(gateway: httpx.AsyncClient) -> None:
    for image_id in ("cats/1.jpg", "/abs/photo.jpg", "a..b", ".hidden/x", "ä ö"):
        response = await gateway.post(
            "/api/v1/index", json={"image_data": b64(make_image(2)), "image_id": image_id}
        )
        assert response.status_code == 202, (image_id, response.text)
    # (a/../b is not even sendable: the HTTP client turns it into /api/v1/images/b)
    for path in ("/api/v1/images/a%C2%A0b", "/api/v1/images/a//b", "/api/v1/images/a/"):
        response = await gateway.delete(path)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"image_data": "aGk=", "top_k": "5"}', "validation_error"),
        (b'{"image_data": "aGk=", "top_k": true}', "validation_error"),
        (b'{"image_data": "aGk=", "top_k": 5.0}', "validation_error"),
        (b'{"image_data": "aGk=", "include_metadata": "yes"}', "validation_error"),
        (b'{"image_data": "aGk=", "threshold": "0.5"}', "validation_error"),
        (b'{"image_data": 5}', "validation_error"),
    ],
)
async def test_search_fields_have_strict_types(
    gateway: httpx.AsyncClient, body: bytes, code: str
) -> None:
    response = await gateway.post(
        "/api/v1/search", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize(
    "body",
    [
        b'{"image_data": ',
        b'{"image_data": "aGk=", "image_id": "a", "metadata": ' + b'{"a": ' * 1000 + b"1"
        + b"}" * 1001,
        b"[" * 100_000 + b"]" * 100_000,
    ],
)  # fmt: skip
async def test_malformed_or_deeply_nested_json_is_400_invalid_body(
    gateway: httpx.AsyncClient, body: bytes
) -> None:
    response = await gateway.post(
        "/api/v1/index", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_body"


async def test_seed_clients_base64_forms_are_accepted(gateway: httpx.AsyncClient) -> None:
    """A data-URL prefix and MIME base64 (76-character lines, CRLF) as the seed accepted."""
    image = make_image(5)
    mime = base64.encodebytes(image).decode().replace("\n", "\r\n")
    for image_data in (
        f"data:image/png;base64,{b64(image)}",
        mime,
        f"data:image/png;base64,{mime}",
    ):
        response = await gateway.post(
            "/api/v1/index", json={"image_data": image_data, "image_id": "seed/1.png"}
        )
        assert response.status_code == 202, response.text
    bad = await gateway.post(
        "/api/v1/index", json={"image_data": "data:image/png,notbase64", "image_id": "x"}
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_base64"


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
    health = (await gateway.get("/api/v1/health")).json()
    assert health["status"] == "healthy"  # the seed's shape
    assert health["services"] == {"gateway": "healthy"}
    assert health["version"]
    assert datetime.fromisoformat(health["timestamp"]) <= datetime.now(UTC)
    # Writes need Kafka only: without an indexer the gateway stays in service, degraded.
    ready = await gateway.get("/api/v1/ready")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "degraded",
        "checks": {"kafka": "up", "redis": "up", "vector_store": "down"},
    }


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


async def test_rate_limit_per_key_with_retry_after(
    secured: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The limiter's clock is pinned 10 s into a minute, so the four requests cannot
    # straddle a window boundary, and Retry-After is known exactly.
    now = [float(int(time.time()) // 60 * 60 + 10)]
    monkeypatch.setattr(security, "time", SimpleNamespace(time=lambda: now[0]))
    body = {"image_data": b64(make_image(6)), "image_id": "r"}

    async def post(key: str) -> httpx.Response:
        return await secured.post("/api/v1/index", json=body, headers={"X-API-Key": key})

    codes = [(await post("alpha")).status_code for _ in range(4)]
    assert codes == [202, 202, 202, 429]
    limited = await post("alpha")
    assert limited.json()["error"]["code"] == "rate_limited"
    assert limited.headers["retry-after"] == "50"
    assert (await post("beta")).status_code == 202  # limits are per caller
    now[0] += 60  # the next window
    assert (await post("alpha")).status_code == 202


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
    record = await first_image_record(settings)
    assert record.key == b"w"


async def test_header_checked_writes_accept_what_only_a_decode_would_refuse(
    infra: Services, topic_prefix: str
) -> None:
    """GATEWAY_VERIFY_WRITES=header: the header's checks still refuse (a PDF, a pixel
    bomb); a JPEG cut short is accepted and produced as it is, for the embedder to
    decode and dead-letter with its reason."""
    settings = GatewaySettings(
        kafka=KafkaSettings(bootstrap_servers=infra.bootstrap, topic_prefix=topic_prefix),
        redis=RedisSettings(url=infra.redis_url),
        verify_writes="header",
    )
    truncated = make_image(2, fmt="JPEG")[:-600]
    async with in_process_gateway(settings) as client:
        for data, code in ((b"%PDF-1.7 hello", "unsupported_format"),
                           (png_bomb(100_000, 100_000), "too_many_pixels")):  # fmt: skip
            refused = await client.post(
                "/api/v1/index", json={"image_data": b64(data), "image_id": "a"}
            )
            assert (refused.status_code, refused.json()["error"]["code"]) == (422, code)
        accepted = await client.post(
            "/api/v1/index", json={"image_data": b64(truncated), "image_id": "cut"}
        )
        assert accepted.status_code == 202, accepted.text
    decoded = GatewaySettings(
        kafka=KafkaSettings(bootstrap_servers=infra.bootstrap, topic_prefix=topic_prefix),
        redis=RedisSettings(url=infra.redis_url),
    )
    async with in_process_gateway(decoded) as client:  # the default decodes: a 422 at once
        refused = await client.post(
            "/api/v1/index", json={"image_data": b64(truncated), "image_id": "cut"}
        )
        assert (refused.status_code, refused.json()["error"]["code"]) == (422, "corrupt_image")
    record = await first_image_record(settings)
    assert (record.key, record.value) == (b"cut", truncated)
