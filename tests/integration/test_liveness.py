"""A worker's ``/healthz`` on a real broker: starting, alive, and dead for each reason
(a handler that hangs, a consume loop that stopped, an event loop that is blocked)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable

import pytest
from faststream.kafka import KafkaBroker

from imgsim_core.kafka import ensure_topics, make_producer
from imgsim_core.liveness import Liveness
from imgsim_core.settings import KafkaSettings
from imgsim_core.telemetry import serve_metrics
from imgsim_devstack.processes import free_port
from tests.conftest import Services

pytestmark = pytest.mark.integration


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def healthz(port: int) -> tuple[int, str]:
    code, body = get(f"http://127.0.0.1:{port}/healthz")
    return code, json.loads(body)["status"]


async def until(condition: Callable[[], Awaitable[bool]], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_healthz_follows_the_handlers_and_the_consume_loop(
    infra: Services, topic_prefix: str
) -> None:
    settings = KafkaSettings(
        bootstrap_servers=infra.bootstrap, topic_prefix=topic_prefix, partitions=1
    )
    await ensure_topics(settings)
    topic = settings.topics.queries
    liveness = Liveness(every_s=0.1, stale_after_s=0.5, stuck_after_s=0.5)
    broker = KafkaBroker(infra.bootstrap, middlewares=(liveness.middleware,))
    release = asyncio.Event()
    handled: list[bytes] = []

    @broker.subscriber(topic, group_id=f"{topic_prefix}live", auto_offset_reset="earliest")
    async def hangs(body: bytes) -> None:
        await release.wait()
        handled.append(body)

    port = free_port()
    serve_metrics(port, liveness=liveness)
    assert await asyncio.to_thread(healthz, port) == (503, "starting")
    await broker.start()
    await liveness.start(broker)
    try:
        assert await asyncio.to_thread(healthz, port) == (200, "alive")
        code, metrics = await asyncio.to_thread(get, f"http://127.0.0.1:{port}/metrics")
        assert code == 200
        assert "# TYPE python_gc_objects_collected_total counter" in metrics

        producer = make_producer(settings, linger_ms=0)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"stuck")
        finally:
            await producer.stop()

        async def stuck() -> bool:
            code, status = await asyncio.to_thread(healthz, port)
            return code == 503 and "in its handler" in status

        await until(stuck)
        release.set()
        await until(lambda: asyncio.sleep(0, bool(handled)))
        assert await asyncio.to_thread(healthz, port) == (200, "alive")

        # The event loop blocked (as by a native call holding it): the probe, answered
        # from another thread meanwhile, says so.
        seen: list[tuple[int, str]] = []
        probe = threading.Timer(0.8, lambda: seen.append(healthz(port)))
        probe.start()
        time.sleep(1.2)  # noqa: ASYNC251 - blocking the loop is the point
        probe.join()
        assert seen[0][0] == 503, seen
        assert seen[0][1].startswith("event loop blocked"), seen
        await asyncio.sleep(0.3)
        assert await asyncio.to_thread(healthz, port) == (200, "alive")

        # A consume loop that stopped while the process lives on.
        await broker.subscribers[0].stop()

        async def stopped() -> bool:
            code, status = await asyncio.to_thread(healthz, port)
            return code == 503 and "not running" in status

        await until(stopped)
    finally:
        await liveness.stop()
        await broker.stop()
    assert await asyncio.to_thread(healthz, port) == (503, "starting")
