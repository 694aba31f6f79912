"""The broker killed (SIGKILL) under a running gateway, then started again.

While it is down, writes, searches and stats answer a prompt 503 ``unavailable`` with
``Retry-After`` (never a 202: nothing is acknowledged that is not durable); once it is
back, writes are accepted again and the gateway says that Kafka works again.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from imgsim_core.settings import KafkaSettings, RedisSettings
from imgsim_devstack.processes import KafkaBroker, free_port
from imgsim_gateway.settings import GatewaySettings
from tests.conftest import Services, in_process_gateway
from tests.imagegen import make_image

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]

PROMPT_S = 3.0  # the 2 s send timeout plus the request's own work


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[KafkaBroker]:
    kafka = KafkaBroker(
        "kafka-faults", tmp_path / "kafka.log", data_dir=tmp_path / "kafka", port=free_port()
    )
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


def index_body(seed: int) -> dict[str, object]:
    image = base64.b64encode(make_image(seed, fmt="JPEG")).decode()
    return {"image_data": image, "image_id": f"down/{seed}.jpg"}


async def timed(send: Callable[[], Awaitable[httpx.Response]]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await send()
    return response, time.monotonic() - started


async def test_a_dead_broker_gets_prompt_503s_and_writes_resume_after_it(
    broker: KafkaBroker, infra: Services, caplog: pytest.LogCaptureFixture
) -> None:
    settings = GatewaySettings(
        kafka=KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix="down."),
        redis=RedisSettings(url=infra.redis_url),
        search_timeout_s=10.0,
        status_timeout_s=3.0,
    )
    async with in_process_gateway(settings) as gateway:
        assert (await gateway.post("/api/v1/index", json=index_body(1))).status_code == 202

        broker.kill()
        caplog.clear()
        sends: list[Callable[[], Awaitable[httpx.Response]]] = [
            lambda: gateway.post("/api/v1/index", json=index_body(2)),
            lambda: gateway.delete("/api/v1/images/down/1.jpg"),
            lambda: gateway.post("/api/v1/search/text", json={"query": "a cat"}),
            lambda: gateway.get("/api/v1/stats"),
            lambda: gateway.post("/api/v1/index", json=index_body(3)),
        ]
        for send in sends:
            response, took = await timed(send)
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "unavailable"
            assert response.headers["Retry-After"] == "5"
            assert took < PROMPT_S, f"{response.request.url} took {took:.1f} s"
        ready, took = await timed(lambda: gateway.get("/api/v1/ready"))
        assert ready.status_code == 503, ready.text  # out of service: nothing can be accepted
        assert ready.json()["status"] == "not_ready"
        assert ready.json()["checks"]["kafka"] == "down"
        assert took < PROMPT_S, f"readiness took {took:.1f} s"
        failing = [r for r in caplog.records if "is failing" in r.getMessage()]
        assert len(failing) == 1, "the outage is logged once, not once per request"

        broker.start()
        deadline = time.monotonic() + 60
        while True:  # the producer reconnects on its own
            response = await gateway.post("/api/v1/index", json=index_body(4))
            if response.status_code == 202 or time.monotonic() > deadline:
                break
        assert response.status_code == 202, response.text
        ready = await gateway.get("/api/v1/ready")
        assert ready.status_code == 200, ready.text  # back in service (no indexer: degraded)
        assert ready.json()["checks"]["kafka"] == "up"
        assert any(
            "works again" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records
        )
