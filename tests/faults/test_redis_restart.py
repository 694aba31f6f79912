"""Redis killed (SIGKILL) under the running services, then started again.

While it is down, searches still answer 200 (uncached) and readiness says ``degraded``;
once it is back, the indexer sets the result-cache generation past its old value, caching
resumes by itself, and a write made after the restart is never hidden behind a cached
result.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from imgsim_devstack.processes import RedisServer, free_port
from tests.conftest import Services
from tests.e2e.conftest import running_stack
from tests.imagegen import make_image

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(
        "redis-faults", tmp_path / "redis.log", data_dir=tmp_path / "redis", port=free_port()
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def search(client: httpx.AsyncClient, image: str) -> dict[str, object]:
    response = await client.post("/api/v1/search", json={"image_data": image, "top_k": 3})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def generation(url: str) -> int | None:
    """The stack's result-cache generation (the one key that ends so in this Redis)."""
    client = Redis.from_url(url)
    try:
        keys = await client.keys("*generation")
        value = await client.get(keys[0]) if keys else None
        return None if value is None else int(value)
    finally:
        await client.aclose()


async def ready_status(client: httpx.AsyncClient, wanted: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        status = (await client.get("/api/v1/ready")).json()["status"]
        if status == wanted:
            return
        assert time.monotonic() < deadline, f"readiness stayed {status!r}, not {wanted!r}"
        await asyncio.sleep(0.3)


async def test_searches_survive_a_redis_restart_and_caching_resumes_fresh(
    infra: Services, tmp_path: Path, redis: RedisServer
) -> None:
    env = {"GATEWAY_REDIS__URL": redis.url, "INDEXER_REDIS__URL": redis.url}
    image = base64.b64encode(make_image(3, fmt="JPEG")).decode()
    with running_stack(infra, tmp_path, env) as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
            body = {"image_data": image, "image_id": "r/1.jpg", "metadata": {"v": 1}}
            assert (await client.post("/api/v1/index?wait=true", json=body)).status_code == 202
            assert (await search(client, image))["cached"] is False
            assert (await search(client, image))["cached"] is True

            before = await generation(redis.url)
            assert before is not None
            assert before >= 1  # the write bumped it

            redis.kill()
            await ready_status(client, "degraded")
            for _ in range(3):
                result = await search(client, image)
                assert result["cached"] is False

            redis.start()
            await ready_status(client, "ready")
            deadline = time.monotonic() + 10
            while (restored := await generation(redis.url)) is None:  # the indexer sets it
                assert time.monotonic() < deadline, "the generation was not set again"
                await asyncio.sleep(0.1)
            assert restored > before  # past every value seen: no result of before can match
            first = await search(client, image)
            assert first["cached"] is False  # the restarted Redis holds nothing
            assert (await search(client, image))["cached"] is True  # caching resumed

            body["metadata"] = {"v": 2}  # a write after the restart: the cache must not hide it
            assert (await client.post("/api/v1/index?wait=true", json=body)).status_code == 202
            after = await search(client, image)
            results = after["results"]
            assert isinstance(results, list)
            assert results[0]["metadata"] == {"v": 2}
