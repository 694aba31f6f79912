"""Zero-downtime reindex and rebuild-from-nothing on the three services, real broker."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from imgsim_core.telemetry import READY_MESSAGE as READY_MARKER
from imgsim_devstack.processes import ServiceProcess, free_port
from imgsim_embedder.testimages import distinct_image
from tests.conftest import Services
from tests.e2e.conftest import STORES, running_stack, store_env
from tests.e2e.conftest import RunningStack as Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(params=STORES)
def stack(request: pytest.FixtureRequest, infra: Services, tmp_path: Path) -> Iterator[Stack]:
    with running_stack(infra, tmp_path, store_env(request.param, infra)) as running:
        yield running


def b64(n: int) -> str:
    return base64.b64encode(distinct_image(n)[0]).decode()


async def index_many(client: httpx.AsyncClient, numbers: range) -> None:
    items = [{"image_data": b64(n), "image_id": f"img-{n}"} for n in numbers]
    response = await client.post("/api/v1/index/batch?wait=true", json={"items": items})
    assert response.status_code == 202, response.text
    assert response.json()["rejected"] == 0


def collection_of(stack: Stack) -> str:
    """The name searches go through: ``images``, or the server's collection of this test."""
    return stack.services[0].env.get("INDEXER_QDRANT__COLLECTION", "images")


async def test_reindex_switches_with_zero_failed_searches(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    await index_many(client, range(20))
    stop = asyncio.Event()
    outcomes: list[int] = []

    async def search_continuously(worker: int) -> None:
        n = 0
        while not stop.is_set():
            response = await client.post(
                "/api/v1/search", json={"image_data": b64((worker * 7 + n) % 20), "top_k": 3}
            )
            outcomes.append(response.status_code)
            n += 1

    searchers = [asyncio.create_task(search_continuously(w)) for w in range(2)]
    try:
        started = await client.post("/api/v1/admin/reindex")
        assert started.status_code == 202, started.text
        assert started.json()["state"] == "running"
        assert started.json()["target"].endswith("_v2")
        # Live traffic during the reindex: new images and a delete.
        await index_many(client, range(20, 25))
        deleted = await client.delete("/api/v1/images/img-3?wait=true")
        assert deleted.status_code == 202
        deadline = time.monotonic() + 120
        while True:
            status = (await client.get("/api/v1/admin/reindex")).json()
            assert status["state"] != "failed", status
            if status["state"] == "done":
                break
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.3)
        # Searches on the new collection too: four more answers, so at least two that
        # both searchers sent after the switch.
        switched_at = len(outcomes)
        while len(outcomes) < switched_at + 4:
            assert time.monotonic() < deadline, "no search was answered after the switch"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*searchers)

    assert len(outcomes) > 10
    assert len(outcomes) >= switched_at + 4
    assert [code for code in outcomes if code != 200] == []
    assert status["collection"].endswith("_v2")
    assert status["processed"] >= status["total"] > 0
    assert status["old_collections"] == [status["collection"].replace("_v2", "_v1")]
    stats = (await client.get("/api/v1/stats")).json()
    assert stats["indexed_images"] == 24
    assert stats["collection"] == collection_of(stack)
    assert (await client.get("/api/v1/images/img-22")).status_code == 200
    assert (await client.get("/api/v1/images/img-3")).status_code == 404
    top = await client.post("/api/v1/search", json={"image_data": b64(22), "top_k": 1})
    assert top.json()["results"][0]["image_id"] == "img-22"

    dropped = (await client.post("/api/v1/admin/reindex/drop-old")).json()
    assert dropped["dropped"] == [status["collection"].replace("_v2", "_v1")]
    assert dropped["old_collections"] == []


async def test_an_empty_store_rebuilds_from_the_compacted_topics(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    await index_many(client, range(12))
    await client.delete("/api/v1/images/img-5?wait=true")
    indexer = stack.services[0]
    assert indexer.name == "indexer"
    indexer.stop()
    fresh = ServiceProcess(
        "indexer-fresh",
        stack.data_dir / "logs" / "indexer-fresh.log",
        module="imgsim_indexer",
        env={
            **indexer.env,
            "INDEXER_QDRANT__PATH": str(stack.data_dir / "qdrant-empty"),
            # on a server: a collection of its own
            "INDEXER_QDRANT__COLLECTION": f"fresh{uuid.uuid4().hex[:6]}",
            "INDEXER_GROUP_ID": f"fresh-{uuid.uuid4().hex[:6]}",
        },
        ready_marker=READY_MARKER,
    )
    stack.services[0] = fresh
    fresh.start()
    deadline = time.monotonic() + 90
    while True:
        response = await client.get("/api/v1/stats")
        if response.status_code == 200 and response.json()["indexed_images"] == 11:
            break
        assert time.monotonic() < deadline, response.text
        await asyncio.sleep(0.5)
    assert (await client.get("/api/v1/images/img-5")).status_code == 404
    top = await client.post("/api/v1/search", json={"image_data": b64(7), "top_k": 1})
    assert top.json()["results"][0]["image_id"] == "img-7"


def embedder_of_another_model(stack: Stack, *, seed: int, serve_queries: bool) -> ServiceProcess:
    """An embedder with other weights (seed) in its own group: it re-embeds every image."""
    embedder = next(s for s in stack.services if s.name.startswith("embedder"))
    return ServiceProcess(
        f"embedder-seed{seed}-{'q' if serve_queries else 'images'}",
        stack.data_dir / "logs" / f"embedder-seed{seed}-{serve_queries}.log",
        module="imgsim_embedder",
        env={
            **embedder.env,
            "EMBEDDER_MODEL__SEED": str(seed),
            "EMBEDDER_GROUP_ID": f"imgsim-embedder-seed{seed}",
            "EMBEDDER_SERVE_QUERIES": "true" if serve_queries else "false",
            "EMBEDDER_METRICS_PORT": str(free_port()),
        },
        ready_marker=READY_MARKER,
    )


async def test_a_model_change_reindexes_through_the_new_models_embedder(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    await index_many(client, range(10))
    old_model = (await client.get("/api/v1/stats")).json()["model_id"]
    new_model = old_model.replace("seed0", "seed1")
    assert new_model != old_model
    # 1. An embedder of the new model re-embeds the images topic from the start.
    images_only = embedder_of_another_model(stack, seed=1, serve_queries=False)
    stack.services.append(images_only)
    images_only.start()
    # 2. The reindex builds the new model's collection while the old one serves.
    started = await client.post("/api/v1/admin/reindex", json={"model_id": new_model})
    assert started.status_code == 202, started.text
    assert started.json()["model_id"] == new_model
    await index_many(client, range(10, 12))  # live writes reach both models' collections
    deadline = time.monotonic() + 150
    while (status := (await client.get("/api/v1/admin/reindex")).json())["state"] != "done":
        assert status["state"] != "failed", status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.5)
    stats = (await client.get("/api/v1/stats")).json()
    assert stats["model_id"] == new_model
    assert stats["indexed_images"] == 12
    assert stats["dead_letters"] == 0  # the other model's vectors are skipped, not rejected
    # 3. Queries still embedded by the old model search the old model's collection, which
    #    has every image, also those written around the switch.
    for n in (0, 5, 10, 11):
        top = await client.post("/api/v1/search", json={"image_data": b64(n), "top_k": 1})
        assert top.json()["results"][0]["image_id"] == f"img-{n}"
        assert top.json()["results"][0]["score"] >= 0.99
    # 4. Queries move to the new model: its embedder serves them, the old one stops.
    old_embedder = next(s for s in stack.services if s.name == "embedder")
    old_embedder.stop()
    images_only.stop()
    serving = embedder_of_another_model(stack, seed=1, serve_queries=True)
    stack.services.append(serving)
    serving.start()
    await index_many(client, range(12, 13))  # new writes under the new model
    for n in (3, 11, 12):
        top = await client.post("/api/v1/search", json={"image_data": b64(n), "top_k": 1})
        assert top.status_code == 200, top.text
        assert top.json()["results"][0]["image_id"] == f"img-{n}"
        assert top.json()["results"][0]["score"] >= 0.99
    assert (await client.get("/api/v1/stats")).json()["indexed_images"] == 13
    dropped = (await client.post("/api/v1/admin/reindex/drop-old")).json()
    assert dropped["dropped"] == [status["collection"].replace("_v2", "_v1")]


async def test_a_reindex_is_refused_while_several_indexers_share_the_partitions(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    """A reindex follows one indexer's live writes, so it needs one indexer holding every
    partition of the vectors topic: with a second one in the group it is refused, with
    the reason, and runs once the second has left."""
    await index_many(client, range(6))
    indexer = stack.services[0]
    assert indexer.name == "indexer"
    second = ServiceProcess(
        "indexer-second",
        stack.data_dir / "logs" / "indexer-second.log",
        module="imgsim_indexer",
        env={
            **indexer.env,
            "INDEXER_QDRANT__PATH": str(stack.data_dir / "qdrant-second"),
            "INDEXER_METRICS_PORT": str(free_port()),
        },
        ready_marker=READY_MARKER,
    )
    stack.services.append(second)
    second.start()
    vectors = f"topic='{indexer.env['INDEXER_KAFKA__TOPIC_PREFIX']}vectors'"
    deadline = time.monotonic() + 60
    while not any(
        "assigned to partitions" in line and vectors in line
        for line in second.log_of_this_run().splitlines()
    ):
        assert time.monotonic() < deadline, second.log_tail()
        await asyncio.sleep(0.3)

    refused = await client.post("/api/v1/admin/reindex")
    assert refused.status_code == 202, refused.text
    assert refused.json()["state"] == "failed", refused.json()
    assert "other indexers in group" in refused.json()["error"]
    assert refused.json()["collection"] == collection_of(stack)

    second.stop()  # leaves the group: the first takes every partition back
    stack.services.remove(second)
    deadline = time.monotonic() + 60
    while True:
        started = (await client.post("/api/v1/admin/reindex")).json()
        if started["state"] == "running":
            break
        assert "partitions" in (started.get("error") or ""), started
        assert time.monotonic() < deadline, started
        await asyncio.sleep(0.5)
    while (status := (await client.get("/api/v1/admin/reindex")).json())["state"] != "done":
        assert status["state"] in {"running", "switching"}, status
        assert time.monotonic() < deadline + 60, status
        await asyncio.sleep(0.3)
    assert status["collection"].endswith("_v2")
