"""kill -9 of the embedder, then of the indexer, while images stream in over HTTP.

Every image the gateway accepted (202) ends up indexed exactly once: nothing is lost
(consumer offsets are committed only after the output is acknowledged) and nothing is
duplicated (point ids derive from image ids, so a redelivered record overwrites).
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import httpx
import pytest

from imgsim_devstack.processes import ServiceProcess
from tests.conftest import Services
from tests.e2e.conftest import running_stack
from tests.imagegen import make_image

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

IMAGES = 240


async def indexed(client: httpx.AsyncClient) -> int:
    response = await client.get("/api/v1/stats")
    return int(response.json()["indexed_images"]) if response.status_code == 200 else -1


async def restart(service: ServiceProcess) -> float:
    """kill -9, start again; the seconds until it is ready."""
    service.kill()
    started = time.monotonic()
    await asyncio.to_thread(service.start)
    return time.monotonic() - started


async def test_kill_9_of_embedder_and_indexer_mid_stream_loses_and_duplicates_nothing(
    infra: Services, tmp_path: Path
) -> None:
    with running_stack(infra, tmp_path) as stack:
        by_name = {s.name: s for s in stack.services}
        payloads = [base64.b64encode(make_image(i, fmt="JPEG")).decode() for i in range(IMAGES)]
        accepted: list[int] = []
        semaphore = asyncio.Semaphore(8)
        a_third_in = asyncio.Event()
        async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:

            async def send(i: int) -> None:
                async with semaphore:
                    response = await client.post(
                        "/api/v1/index",
                        json={"image_data": payloads[i], "image_id": f"kill/{i:04d}"},
                    )
                    assert response.status_code == 202, response.text
                    accepted.append(i)
                    if len(accepted) == IMAGES // 3:
                        a_third_in.set()
                    await asyncio.sleep(0.02)  # a steady stream, not one burst

            stream = asyncio.gather(*(send(i) for i in range(IMAGES)))
            await a_third_in.wait()
            embedder_down_s = await restart(by_name["embedder"])
            deadline = time.monotonic() + 120
            while True:  # the indexer dies mid-stream: a third indexed, not all
                before_kill = await indexed(client)
                if before_kill >= IMAGES // 3:
                    break
                assert time.monotonic() < deadline, f"only {before_kill} indexed after 120 s"
                await asyncio.sleep(0.05)
            indexer_down_s = await restart(by_name["indexer"])
            await stream
            assert sorted(accepted) == list(range(IMAGES))

            deadline = time.monotonic() + 180
            while (count := await indexed(client)) < IMAGES:
                assert time.monotonic() < deadline, f"{count} of {IMAGES} indexed after 180 s"
                await asyncio.sleep(0.5)
            await asyncio.sleep(2)  # redeliveries would land now, and must not add points
            assert await indexed(client) == IMAGES
            missing = []
            for i in range(0, IMAGES, 7):
                response = await client.get(f"/api/v1/images/kill/{i:04d}")
                if response.status_code != 200:
                    missing.append(i)
            assert missing == []
    assert before_kill < IMAGES, "the indexer was killed mid-stream, not after it"
    assert embedder_down_s < 90
    assert indexer_down_s < 90
