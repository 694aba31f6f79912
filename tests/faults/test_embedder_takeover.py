"""A second embedder takes over the queries of a killed one within the session timeout.

Two embedders share the query group; one is killed with SIGKILL, so it never leaves the
group. Searches sent to its partitions get no answer until the group's session timeout
(``EMBEDDER_KAFKA__SESSION_TIMEOUT_MS``) expires and the survivor is given them; every
search sent after that is answered again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import pytest

from imgsim_core.telemetry import READY_MESSAGE
from imgsim_devstack.processes import ServiceProcess, free_port
from tests.conftest import Services
from tests.e2e.conftest import running_stack

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

SESSION_S = 6.0  # the broker's smallest session timeout by default
SEARCH_TIMEOUT_S = 2.0


async def search(client: httpx.AsyncClient) -> tuple[float, int]:
    """One uncached text search: when it was sent and its status."""
    sent = time.monotonic()
    response = await client.post(
        "/api/v1/search/text", json={"query": f"takeover {uuid.uuid4().hex}", "top_k": 1}
    )
    return sent, response.status_code


async def forwarded(embedder: ServiceProcess) -> bool:
    """Whether this embedder has forwarded a query (it holds a query partition)."""
    port = embedder.env["EMBEDDER_METRICS_PORT"]
    async with httpx.AsyncClient(timeout=5) as metrics:
        text = (await metrics.get(f"http://127.0.0.1:{port}/metrics")).text
    line = 'imgsim_embedder_queries_total{outcome="forwarded"} '
    return any(row.startswith(line) and float(row[len(line) :]) > 0 for row in text.splitlines())


async def test_second_embedder_takes_over_a_killed_ones_queries_within_session_timeout(
    infra: Services, tmp_path: Path
) -> None:
    env = {
        "EMBEDDER_KAFKA__SESSION_TIMEOUT_MS": str(int(SESSION_S * 1000)),
        "EMBEDDER_GROUP_ID": f"takeover-{uuid.uuid4().hex[:8]}",
        "GATEWAY_SEARCH_TIMEOUT_S": str(SEARCH_TIMEOUT_S),
    }
    with running_stack(infra, tmp_path, extra_env=env) as stack:
        first = next(s for s in stack.services if s.name == "embedder")
        second = ServiceProcess(
            "embedder-2",
            stack.data_dir / "logs" / "embedder-2.log",
            module="imgsim_embedder",
            env={**first.env, "EMBEDDER_METRICS_PORT": str(free_port())},
            ready_marker=READY_MESSAGE,
        )
        await asyncio.to_thread(second.start)
        try:
            async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
                # Both members hold partitions once each has forwarded a query, and the
                # group has settled once searches on every partition succeed.
                deadline = time.monotonic() + 60
                streak = 0
                while streak < 12 or not all([await forwarded(first), await forwarded(second)]):
                    assert time.monotonic() < deadline, "the group never settled on two members"
                    _, status = await search(client)
                    assert status in (200, 504), status
                    streak = streak + 1 if status == 200 else 0

                first.kill()
                killed = time.monotonic()
                tasks: list[asyncio.Task[tuple[float, int]]] = []
                while time.monotonic() - killed < SESSION_S + 8:
                    tasks.append(asyncio.create_task(search(client)))
                    await asyncio.sleep(0.2)
                results = await asyncio.gather(*tasks)
        finally:
            second.stop()

    failed = [sent - killed for sent, status in results if status != 200]
    statuses = {status for _, status in results}
    assert failed, "no search reached the killed embedder's partitions: the test proves nothing"
    assert statuses <= {200, 504}, statuses
    outage_s = max(failed)  # every search sent later than this was answered
    assert outage_s <= SESSION_S + 1, (
        f"searches failed until {outage_s:.1f} s after the kill (session {SESSION_S:.0f} s): "
        + " ".join(f"{sent - killed:.1f}:{status}" for sent, status in results)
    )
    answered_after = [sent - killed for sent, status in results if status == 200]
    assert max(answered_after) > outage_s + 4  # and they kept being answered
