"""The gateway's Kafka figures for /stats (lag, dead letters, rates), on a real broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from imgsim_core.kafka import ensure_topics, make_producer
from imgsim_core.settings import KafkaSettings
from imgsim_gateway.kafkastats import KafkaStats
from tests.conftest import Services

pytestmark = pytest.mark.integration


async def _produce(settings: KafkaSettings, counts: dict[str, int]) -> None:
    producer = make_producer(settings, linger_ms=0)
    await producer.start()
    try:
        for topic, n in counts.items():
            for i in range(n):
                await producer.send_and_wait(topic, b"v", key=str(i).encode(), partition=0)
    finally:
        await producer.stop()


async def _commit(settings: KafkaSettings, group: str, topic: str, offset: int) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.commit({partition: offset})
    finally:
        await consumer.stop()


@asynccontextmanager
async def started(settings: KafkaSettings, groups: dict[str, str]) -> AsyncIterator[KafkaStats]:
    """The topics made, and a started KafkaStats of them."""
    await ensure_topics(settings)
    stats = KafkaStats(settings, groups)
    await stats.start()
    try:
        yield stats
    finally:
        await stats.stop()


async def test_one_read_gives_lag_dead_letters_and_rates(
    infra: Services, topic_prefix: str
) -> None:
    settings = KafkaSettings(
        bootstrap_servers=infra.bootstrap, topic_prefix=topic_prefix, partitions=2
    )
    topics = settings.topics
    groups = {topics.images: f"{topic_prefix}embedder", topics.vectors: f"{topic_prefix}indexer"}
    async with started(settings, groups) as stats:
        await _produce(settings, {topics.images: 7, topics.vectors: 4, topics.deadletter: 3})
        await _commit(settings, f"{topic_prefix}embedder", topics.images, 5)
        first = await stats.read()
        assert first.lag == {
            topics.images: (f"{topic_prefix}embedder", 2),  # 7 written, 5 committed
            topics.vectors: (f"{topic_prefix}indexer", 4),  # nothing committed
        }
        assert first.dead_letters == 3
        assert first.rates == (0.0, 0.0)  # one sample: no rate yet

        await _produce(settings, {topics.images: 6})
        await asyncio.sleep(1.2)
        later = await stats.read()
        elapsed = later.at - first.at
        assert later.lag[topics.images][1] == 8
        assert later.rates == pytest.approx((6 / elapsed, 0.0))


async def test_callers_share_the_read_in_flight_and_a_later_caller_reads_again(
    infra: Services, topic_prefix: str
) -> None:
    settings = KafkaSettings(bootstrap_servers=infra.bootstrap, topic_prefix=topic_prefix)
    topics = settings.topics
    async with started(settings, {topics.images: f"{topic_prefix}g"}) as stats:
        together = await asyncio.gather(*(stats.read() for _ in range(10)))
        assert stats.reads == 1
        assert all(f is together[0] for f in together)
        assert together[0].lag[topics.images][1] == 0

        await _produce(settings, {topics.images: 2})
        assert (await stats.read()).lag[topics.images][1] == 2  # asked after the write
        assert stats.reads == 2


async def test_a_caller_that_gives_up_does_not_cancel_the_shared_read(
    infra: Services, topic_prefix: str
) -> None:
    settings = KafkaSettings(bootstrap_servers=infra.bootstrap, topic_prefix=topic_prefix)
    async with started(settings, {settings.topics.images: f"{topic_prefix}g"}) as stats:
        impatient = asyncio.create_task(stats.read())
        patient = asyncio.create_task(stats.read())
        await asyncio.sleep(0)
        impatient.cancel()
        figures = await patient
        assert figures.dead_letters == 0
        assert stats.reads == 1
