"""The gateway's watch on the result-cache generation (what ``wait=true`` writes wait on),
against a real Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from imgsim_core.redisclient import make_redis
from imgsim_core.settings import RedisSettings
from imgsim_gateway.cache import GenerationWatch
from tests.conftest import Services

pytestmark = pytest.mark.integration


async def test_waiters_wake_when_the_counter_moves_and_not_before(infra: Services) -> None:
    redis = make_redis(RedisSettings(url=infra.redis_url))
    key = f"w{uuid.uuid4().hex[:8]}.generation"
    watch = GenerationWatch(redis, key, every_s=0.01)
    try:
        assert await watch.current() is None  # no batch applied yet
        assert not await watch.moved_from(None, 0.1)  # nothing moved: the timeout ends it
        await redis.incr(key)
        seen = await watch.current()
        assert seen == b"1"
        assert not await watch.moved_from(seen, 0.1)
        waiters = [asyncio.create_task(watch.moved_from(seen, 10)) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waiters)
        await redis.incr(key)  # the indexer applied a batch
        assert await asyncio.gather(*waiters) == [True, True, True]
        # A batch applied between reading the counter and waiting is not missed.
        seen = await watch.current()
        assert seen == b"2"
        await redis.incr(key)
        assert await watch.moved_from(seen, 10)
    finally:
        await watch.close()
        await redis.delete(key)
        await redis.aclose()


async def test_without_redis_a_wait_ends_at_its_timeout() -> None:
    redis = make_redis(RedisSettings(url="redis://127.0.0.1:1/0"))  # nothing listens there
    watch = GenerationWatch(redis, "generation", every_s=0.01)
    try:
        assert await watch.current() is None
        assert not await watch.moved_from(None, 0.2)
    finally:
        await watch.close()
        await redis.aclose()
