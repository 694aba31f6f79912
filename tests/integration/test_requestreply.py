"""Request/reply over a real broker: several requesters at once, each gets its own replies."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faststream.kafka import KafkaBroker

from imgsim_core.kafka import ensure_topics, make_producer, now_ms
from imgsim_core.requestreply import Requester, RequestTimeoutError
from imgsim_core.settings import KafkaSettings
from tests.conftest import Services

pytestmark = pytest.mark.integration


async def _requester(settings: KafkaSettings, name: str) -> Requester:
    producer = make_producer(settings, linger_ms=0)
    await producer.start()
    requester = Requester(
        producer, settings.bootstrap_servers, settings.topics.replies(name), fetch_max_wait_ms=5
    )
    await requester.start()
    return requester


async def _close(requester: Requester) -> None:
    await requester.stop()
    await requester._producer.stop()


async def test_two_requesters_each_get_their_own_replies(
    infra: Services, topic_prefix: str
) -> None:
    settings = KafkaSettings(
        bootstrap_servers=infra.bootstrap, topic_prefix=topic_prefix, partitions=3
    )
    await ensure_topics(settings)
    broker = KafkaBroker(infra.bootstrap)

    @broker.subscriber(
        settings.topics.queries, group_id=f"{topic_prefix}echo", fetch_max_wait_ms=5,
        auto_offset_reset="earliest",
    )  # fmt: skip
    async def echo(body: dict[str, int]) -> dict[str, int]:
        return {"n": body["n"], "square": body["n"] ** 2}

    await broker.start()
    first, second = await _requester(settings, "a"), await _requester(settings, "b")
    try:

        async def ask(requester: Requester, n: int) -> dict[str, int]:
            raw = await requester.request(
                settings.topics.queries, json.dumps({"n": n}).encode(), timeout_s=20
            )
            reply: dict[str, int] = json.loads(raw)
            return reply

        replies = await asyncio.gather(
            *(ask(first, n) for n in range(20)), *(ask(second, n) for n in range(100, 120))
        )
        expected = [{"n": n, "square": n * n} for n in [*range(20), *range(100, 120)]]
        assert replies == expected
        assert first.pending == 0
        assert second.pending == 0
    finally:
        await _close(first)
        await _close(second)
        await broker.stop()


async def test_a_requester_starts_without_metadata_errors(
    infra: Services, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Its reply topic is served before its first heartbeat is sent to it: a producer
    sending to a topic the broker's metadata lacks logs an error each time it asks."""
    settings = KafkaSettings(
        bootstrap_servers=infra.bootstrap, topic_prefix=topic_prefix, partitions=6
    )
    await ensure_topics(settings)  # the broker busy with leaders, as when a stack starts
    with caplog.at_level(logging.WARNING, logger="aiokafka"):
        requester = await _requester(settings, "quiet")
        await _close(requester)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("aiokafka")] == []


async def test_no_reply_times_out_and_cleans_up(infra: Services, topic_prefix: str) -> None:
    settings = KafkaSettings(
        bootstrap_servers=infra.bootstrap, topic_prefix=topic_prefix, partitions=1
    )
    await ensure_topics(settings)
    requester = await _requester(settings, "lonely")
    try:
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError, match="no reply"):
            await requester.request(settings.topics.queries, b"{}", timeout_s=0.5)
        assert 0.4 < time.monotonic() - started < 5
        assert requester.pending == 0
    finally:
        await _close(requester)


async def test_a_killed_requesters_reply_topic_is_swept_and_a_live_ones_kept(
    infra: Services, topic_prefix: str
) -> None:
    settings = KafkaSettings(bootstrap_servers=infra.bootstrap, topic_prefix=topic_prefix)
    topics = settings.topics
    dead, empty = topics.replies("killed"), topics.replies("never-wrote")
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.bootstrap)
    await admin.start()
    producer = make_producer(settings, linger_ms=0)
    await producer.start()
    live = await _requester(settings, "alive")  # its first heartbeat is written at start
    sweeper = Requester(
        producer, infra.bootstrap, topics.replies("sweeper"), fetch_max_wait_ms=5,
        heartbeat_s=30, orphans_of=topics.replies(), orphan_after_s=60,
    )  # fmt: skip
    try:
        await admin.create_topics([NewTopic(dead, 1, 1), NewTopic(empty, 1, 1)])
        # What a killed requester leaves: its last heartbeat, ten minutes old.
        await producer.send_and_wait(dead, b"", timestamp_ms=now_ms() - 600_000)
        await sweeper.start()

        assert await sweeper.sweep_orphans() == []  # first sighting: only suspects
        assert await sweeper.sweep_orphans() == sorted([dead, empty])
        remaining = {t for t in await admin.list_topics() if t.startswith(topics.replies())}
        assert remaining == {live.reply_topic, sweeper.reply_topic}
        assert await sweeper.sweep_orphans() == []
    finally:
        await sweeper.stop()
        await _close(live)
        await producer.stop()
        await admin.close()


def test_orphans_must_outlive_heartbeats() -> None:
    with pytest.raises(ValueError, match="longer than reply_heartbeat_s"):
        KafkaSettings(reply_heartbeat_s=30, orphan_reply_after_s=30)
