"""Consumer lag of a FastStream subscriber, sampled from its aiokafka consumer (real broker)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from faststream.kafka import KafkaBroker

from imgsim_core.kafka import ensure_topics, make_producer
from imgsim_core.lag import CONSUMER_LAG, ConsumerLag
from imgsim_core.settings import KafkaSettings
from tests.conftest import Services

pytestmark = pytest.mark.integration


async def _until(condition: Callable[[], Awaitable[bool]], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)


async def test_lag_counts_records_not_yet_committed(infra: Services, topic_prefix: str) -> None:
    settings = KafkaSettings(
        bootstrap_servers=infra.bootstrap, topic_prefix=topic_prefix, partitions=1
    )
    await ensure_topics(settings)
    topic, group = settings.topics.queries, f"{topic_prefix}lag"
    producer = make_producer(settings, linger_ms=0)
    await producer.start()
    try:
        for n in range(10):
            await producer.send_and_wait(topic, str(n).encode())
    finally:
        await producer.stop()

    release = asyncio.Event()
    broker = KafkaBroker(infra.bootstrap)

    @broker.subscriber(
        topic, group_id=group, auto_offset_reset="earliest", max_records=1, batch=True
    )
    async def slow(_: list[bytes]) -> None:
        await release.wait()

    lag = ConsumerLag(broker, every_s=0.2)
    await broker.start()
    await lag.start()
    try:

        async def behind() -> bool:
            return (await lag.sample()).get((group, topic, "0"), 0) >= 9

        await _until(behind)
        assert CONSUMER_LAG.labels(group, topic, "0")._value.get() >= 9
        release.set()

        async def caught_up() -> bool:
            return (await lag.sample()).get((group, topic, "0")) == 0

        await _until(caught_up)
    finally:
        await lag.stop()
        await broker.stop()
