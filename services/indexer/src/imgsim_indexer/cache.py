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
could read the old generation and be served a result cached before the write. So each
batch holds a :class:`Landing` for its image ids from before its writes to after its
bump, and a lookup of one of them waits for it (the batch's writes and one Redis round
trip, bounded by the Redis timeout); a lookup that shows a write is then answered after
its generation moved. A lookup of any other id never waits: while an index build copies
the shard, a batch's writes wait seconds, and only lookups of its own ids wait with them.

The counter must never go back: a Redis restarted from a snapshot or its append-only file,
or a replica promoted behind its primary, holds an older generation together with results
cached at it, and those would be served as current although writes came after them.
:class:`RollbackWatch` reads the counter every second and, finding it below the highest
value this indexer has seen, moves it past that value, so such results stop being served
within a second (the cache's Redis should keep no data anyway: see the README).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from imgsim_core.tasks import pause

log = logging.getLogger(__name__)

BUMP_FAILURES = Counter(
    "imgsim_indexer_generation_bump_failures", "Failed increments of the result-cache generation."
)
ROLLBACKS = Counter(
    "imgsim_indexer_generation_rollbacks",
    "Times the result-cache generation was found below a value seen before (not gone: "
    "lower), and moved past it.",
)
ROLLBACK_CHECK_S = 1.0


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


class RollbackWatch:
    """Keeps the generation from going back: the highest value this indexer has seen (its
    own bumps, its reads), and a check that moves the counter past it when it is lower."""

    def __init__(self, key: str, *, timeout_s: float, every_s: float = ROLLBACK_CHECK_S) -> None:
        self.key = key
        self.timeout_s = timeout_s
        self.every_s = every_s
        self.highest = 0

    def saw(self, generation: int | None) -> None:
        if generation is not None:
            self.highest = max(self.highest, generation)

    async def check(self, client: Redis) -> int | None:
        """One look: the new value when the counter was found behind and moved, else None
        (also when Redis cannot be reached: the next look tries again)."""
        # Only what was seen before the GET is sent can be compared with its answer: a bump
        # answered on another connection while the GET is on its way may be newer.
        floor = self.highest
        try:
            async with asyncio.timeout(self.timeout_s):
                current = int(await client.get(self.key) or 0)
                if current >= floor:
                    self.saw(current)
                    return None
                # Past the highest value, whatever another indexer adds meanwhile.
                moved = int(await client.incrby(self.key, self.highest - current + 1))
        except (RedisError, OSError, TimeoutError):
            return None  # bump_generation and the gateway log Redis outages
        if current == 0:  # gone with every cached result: nothing stale can be served
            log.info("the result-cache generation %s was gone (Redis restarted empty); "
                     "set it to %d", self.key, moved)  # fmt: skip
        else:
            ROLLBACKS.inc()
            log.warning(
                "the result-cache generation %s went back from %d to %d (a Redis restarted "
                "with its data, or a failover); moved it to %d so that results cached "
                "before are not served", self.key, floor, current, moved,
            )  # fmt: skip
        self.saw(moved)
        return moved

    async def run(self, client: Redis) -> None:
        while True:
            await self.check(client)
            await pause(self.every_s)


class Landing:
    """The image ids of each vectors batch between its writes and its generation bump; a
    lookup of one of them waits until that batch's bump is done (or failed)."""

    def __init__(self) -> None:
        self._batches: list[tuple[frozenset[bytes], asyncio.Event]] = []

    @asynccontextmanager
    async def held(self, keys: Iterable[bytes | None]) -> AsyncIterator[None]:
        """Around a batch's writes and bump; ``keys`` are its records' keys (image ids)."""
        batch = (frozenset(k for k in keys if k), asyncio.Event())
        self._batches.append(batch)
        try:
            yield
        finally:
            self._batches.remove(batch)
            batch[1].set()

    async def passed(self, image_id: str) -> None:
        """Return once no batch that writes ``image_id`` is between its writes and its
        bump (at once for an id that none of them holds)."""
        key = image_id.encode()
        for keys, landed in list(self._batches):
            if key in keys:
                await landed.wait()
