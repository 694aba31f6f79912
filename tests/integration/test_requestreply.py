"""Request/reply over a real broker: several requesters at once, each gets its own replies."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from faststream.kafka import KafkaBroker

from imgsim_core.kafka import ensure_topics, make_producer
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
