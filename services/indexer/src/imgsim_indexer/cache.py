"""The indexer's side of the gateway's result cache: the generation counter.

The gateway keys cached search results by the query, its parameters and the value of
``<topic prefix>generation`` in Redis. After every vectors batch that changed the store,
the indexer increments that key, so a result cached before the write is never served
after it. Redis down or slow: :func:`bump_generation` logs a warning and returns; the
batch goes on (the store is the source of truth) and the bump is owed: it is retried
with the next vectors batch. A Redis that kept its data through the outage may serve a
result cached before it until that retry or the result's TTL, whichever comes first.

A batch's writes are visible to lookups before its bump lands, and a write that waits
(``wait=true``) is answered once a lookup shows it: a search right after that answer
could read the old generation and be served a result cached before the write. So the
batch holds a :class:`Landing` from its first write to its bump, and lookups wait for it
to pass (at most the batch's apply and one Redis round trip, bounded by the Redis
timeout); a lookup that shows a write is then answered after its generation moved.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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


class Landing:
    """Held by each vectors batch from its first write to its generation bump; lookups
    wait until none holds it, so none shows a write whose bump is still to come."""

    def __init__(self) -> None:
        self._holding = 0
        self._passed = asyncio.Event()
        self._passed.set()

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        self._holding += 1
        self._passed.clear()
        try:
            yield
        finally:
            self._holding -= 1
            if not self._holding:
                self._passed.set()

    async def passed(self) -> None:
        """Return once no batch is between its writes and its bump. Waiters woken when
        one ends go on even if the next batch takes it at once: none waits forever."""
        await self._passed.wait()
