"""The three services as processes on a real broker and Redis, driven over HTTP."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from imgsim_embedder.testimages import distinct_images
from tests.conftest import Services
from tests.e2e.conftest import STORES, running_stack, store_env

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(params=STORES)
def stack(request: pytest.FixtureRequest, infra: Services, tmp_path: Path) -> Iterator[str]:
    """The three services; the indexer on embedded Qdrant Edge, or on a Qdrant server."""
    with running_stack(infra, tmp_path, store_env(request.param, infra)) as running:
        yield running.url


async def wait_indexed(client: httpx.AsyncClient, count: int, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    indexed = -1
    while time.monotonic() < deadline:
        response = await client.get("/api/v1/stats")
        if response.status_code == 200:
            indexed = response.json()["indexed_images"]
            if indexed >= count:
                return
        await asyncio.sleep(0.5)
    raise AssertionError(f"only {indexed} of {count} images indexed after {timeout_s} s")


async def test_index_30_images_then_each_finds_itself(stack: str) -> None:
    # Distinct enough that even random weights tell them apart (max cosine ~0.991).
    images = {f"img-{i:02d}": data for i, (data, _) in enumerate(distinct_images(30))}
    async with httpx.AsyncClient(base_url=stack, timeout=60) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    "/api/v1/index",
                    json={
                        "image_data": base64.b64encode(data).decode(),
                        "image_id": image_id,
                        "metadata": {"n": int(image_id[4:6])},
                    },
                )
                for image_id, data in images.items()
            )
        )
        assert [r.status_code for r in responses] == [202] * 30
        await wait_indexed(client, 30)
        assert (await client.get("/api/v1/ready")).json()["status"] == "ready"

        for image_id, data in images.items():
            response = await client.post(
                "/api/v1/search",
                json={"image_data": base64.b64encode(data).decode(), "top_k": 3},
            )
            assert response.status_code == 200, response.text
            body = response.json()
            top = body["results"][0]
            assert top["image_id"] == image_id
            assert top["score"] >= 0.99
            assert top["metadata"] == {"n": int(image_id[4:6])}
            assert len(body["results"]) == 3
            scores = [r["score"] for r in body["results"]]
            assert scores == sorted(scores, reverse=True)
            assert body["took_ms"] > 0


async def test_a_search_of_100_results_with_15_kib_metadata_each_is_answered(stack: str) -> None:
    """The reply (~1.6 MB) is over aiokafka's 1 MB default request size: every producer
    and topic is sized from the documented limits (top_k 100, 16 KiB of metadata)."""
    [(data, _)] = distinct_images(1)
    image = base64.b64encode(data).decode()
    items = [
        {
            "image_data": image,
            "image_id": f"big-{i:03d}",
            "metadata": {"i": i, "blob": "x" * 15_360},
        }
        for i in range(100)
    ]
    async with httpx.AsyncClient(base_url=stack, timeout=60) as client:
        response = await client.post("/api/v1/index/batch", json={"items": items})
        assert response.status_code == 202, response.text
        await wait_indexed(client, 100)
        response = await client.post(
            "/api/v1/search", json={"image_data": image, "top_k": 100, "include_metadata": True}
        )
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert len(results) == 100
        assert sorted(r["metadata"]["i"] for r in results) == list(range(100))
        assert all(len(r["metadata"]["blob"]) == 15_360 for r in results)
