"""The indexer's side of the gateway's result cache: the generation counter.

The gateway keys cached search results by the query, its parameters and the value of
``<topic prefix>generation`` in Redis. After every vectors batch that changed the store,
the indexer increments that key, so a result cached before the write is never served
after it. Redis down or slow: :func:`bump_generation` logs a warning and returns; the
batch goes on (the store is the source of truth) and the bump is owed: it is retried
with the next vectors batch. A Redis that kept its data through the outage may serve a
result cached before it until that retry or the result's TTL, whichever comes first.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

BUMP_FAILURES = Counter(
    "imgsim_indexer_generation_bump_failures", "Failed increments of the result-cache generation."
)


async def bump_generation(client: Redis, key: str, *, timeout_s: float) -> int | None:
    """``INCR key``: the new generation, or None when Redis could not be reached."""
    try:
        async with asyncio.timeout(timeout_s):
            return int(await client.incr(key))
    except (RedisError, OSError, TimeoutError) as exc:
        BUMP_FAILURES.inc()
        log.warning(
            "could not bump the result-cache generation %s (%s); cached results may be "
            "served stale until their TTL ends",
            key,
            exc,
        )
        return None
