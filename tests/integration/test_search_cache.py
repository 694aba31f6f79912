"""The gateway's search caches against a real Redis: one round trip before a search asks."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from imgsim_core.contracts import SearchHit
from imgsim_core.redisclient import make_redis
from imgsim_core.settings import RedisSettings
from imgsim_gateway.cache import SearchCache
from tests.conftest import Services

pytestmark = pytest.mark.integration

PARAMS: dict[str, Any] = {"top_k": 5, "threshold": None, "filter": None}
HITS = [SearchHit(image_id="a", score=0.9)]


class CountingRedis(Redis):
    """Redis that remembers each command it sends (a pipeline's count as one)."""

    sent: list[str]

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(str(args[0]))
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


@pytest.fixture
async def cache(infra: Services) -> AsyncIterator[SearchCache]:
    plain = make_redis(RedisSettings(url=infra.redis_url))
    redis = CountingRedis(connection_pool=plain.connection_pool)
    redis.sent = []
    yield SearchCache(redis, f"c{uuid.uuid4().hex[:8]}.", result_ttl_s=60, embedding_ttl_s=60)
    await plain.aclose()


async def test_a_lookup_reads_the_result_and_the_embedding_in_one_round_trip(
    cache: SearchCache,
) -> None:
    redis: CountingRedis = cache.redis  # type: ignore[assignment]
    miss = await cache.get_result(b"query", None, PARAMS, "model-a")
    assert (miss.hits, miss.embedding, miss.embedding_model) == (None, None, "model-a")
    await cache.put(b"query", None, PARAMS, HITS, miss.generation, ("model-a", "VECTOR"))
    redis.sent.clear()

    found = await cache.get_result(b"query", None, PARAMS, "model-a")

    assert found.hits == HITS
    assert redis.sent == ["MGET"]
    await redis.incr(cache.generation_key)  # a write landed: the result is stale
    redis.sent.clear()
    stale = await cache.get_result(b"query", None, PARAMS, "model-a")
    assert (stale.hits, stale.embedding, stale.embedding_model) == (None, "VECTOR", "model-a")
    assert redis.sent == ["MGET"]
    other = await cache.get_result(b"query", None, PARAMS, "model-b")
    assert (other.embedding, other.embedding_model) == (None, "model-b")
    assert await cache.get_embedding(b"query", "model-a") == "VECTOR"


async def test_without_a_model_or_a_subject_only_the_result_is_read(cache: SearchCache) -> None:
    unknown = await cache.get_result(b"query", None, PARAMS, None)
    by_id = await cache.get_result(None, "img-1", PARAMS, "model-a")
    assert (unknown.embedding_model, by_id.embedding_model) == (None, None)
