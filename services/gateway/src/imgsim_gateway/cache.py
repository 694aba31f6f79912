"""Redis caches on the search path: query embeddings and search results.

- **Embeddings** are keyed by a hash of the query (the image bytes, or the text) and the
  model id, so a search whose embedding is cached skips the embedder and goes straight to
  the indexer. A vector never changes for the same bytes and model, so the TTL is long.
- **Results** are keyed by a hash of the query and every parameter (``top_k``,
  ``threshold``, ``filter``, ``include_metadata``), and each holds the *generation* it
  was computed at: a counter the indexer increments after every write batch it has
  applied. A lookup reads the generation, the result and the query's embedding (for the
  model the gateway last knew) in one ``MGET`` (one round trip) and takes the result only
  if its generation is the current one; a search stores its
  result with the generation it read before asking. Once a write lands the generation
  moves on and older results are never served again (they expire with their TTL, or the
  next search overwrites them). So a cached result is never served after a write it does
  not reflect. (``MGET`` needs its keys on one node: a single Redis, or a primary with
  replicas; not Redis Cluster.)
- **Redis down** means no cache: every call here turns a Redis error into a miss (logged
  at most every 30 s) and never fails a search.
- **Writes that wait** (``wait=true``) watch the same counter (:class:`GenerationWatch`):
  the indexer has applied a batch when it moves, so a write asks the indexer for its
  record again then, instead of every 100 ms whatever happened (see
  :mod:`imgsim_gateway.writes`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from imgsim_core.contracts import SearchHit
from imgsim_core.redisclient import generation_key
from imgsim_core.tasks import cancel_and_wait, pause
from imgsim_gateway.observability import CACHE_HITS, CACHE_MISSES

log = logging.getLogger(__name__)
_HITS = TypeAdapter(list[SearchHit])


@dataclass
class ResultLookup:
    hits: list[SearchHit] | None
    generation: int | None  # None: Redis unavailable, do not store the result
    embedding: str | None = None  # the query's packed vector, for ``embedding_model``
    embedding_model: str | None = None  # the model it was looked up for (None: not asked)


@dataclass
class SearchCache:
    redis: Redis
    prefix: str
    result_ttl_s: int
    embedding_ttl_s: int
    _last_warning: float = 0.0

    @property
    def generation_key(self) -> str:
        return generation_key(self.prefix)

    def _count(self, cache: str, hit: bool) -> None:
        (CACHE_HITS if hit else CACHE_MISSES).labels(cache).inc()

    def _unavailable(self, exc: Exception) -> None:
        if time.monotonic() - self._last_warning > 30:
            self._last_warning = time.monotonic()
            log.warning("Redis unavailable, searching without the cache: %s", exc)

    @staticmethod
    def _digest(*parts: bytes) -> str:
        digest = hashlib.sha256()
        for part in parts:
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        return digest.hexdigest()

    def _result_key(
        self, subject: bytes | None, like_id: str | None, params: dict[str, Any]
    ) -> str:
        query = subject if subject is not None else b"like:" + (like_id or "").encode()
        encoded = json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
        return f"{self.prefix}result:{self._digest(query, encoded)}"

    async def get_result(
        self,
        subject: bytes | None,
        like_id: str | None,
        params: dict[str, Any],
        embedding_model: str | None = None,
    ) -> ResultLookup:
        """The result cached for this query, and with ``embedding_model`` the query's
        embedding for that model, in one round trip."""
        if self.result_ttl_s <= 0:
            return ResultLookup(None, None)
        keys = [self.generation_key, self._result_key(subject, like_id, params)]
        if subject is not None and embedding_model is not None and self.embedding_ttl_s > 0:
            keys.append(self._embedding_key(subject, embedding_model))
        else:
            embedding_model = None
        try:
            current, raw, *embedding = await self.redis.mget(keys)
        except (RedisError, OSError) as exc:
            self._unavailable(exc)
            return ResultLookup(None, None)
        generation = int(current or 0)
        stored, _, hits = _bytes(raw).partition(b":")
        fresh = raw is not None and stored == str(generation).encode()
        self._count("result", fresh)
        lookup = ResultLookup(_HITS.validate_json(hits) if fresh else None, generation)
        if embedding_model is not None and not fresh:  # a fresh result needs no embedding
            lookup.embedding = self._embedding(embedding[0])
            lookup.embedding_model = embedding_model
        return lookup

    def _embedding_key(self, subject: bytes, model_id: str) -> str:
        return f"{self.prefix}embedding:{self._digest(model_id.encode(), subject)}"

    async def get_embedding(self, subject: bytes | None, model_id: str | None) -> str | None:
        if subject is None or model_id is None or self.embedding_ttl_s <= 0:
            return None
        try:
            raw = await self.redis.get(self._embedding_key(subject, model_id))
        except (RedisError, OSError) as exc:
            self._unavailable(exc)
            return None
        return self._embedding(raw)

    def _embedding(self, raw: bytes | str | None) -> str | None:
        self._count("embedding", raw is not None)
        if raw is None:
            return None
        return raw.decode("ascii") if isinstance(raw, bytes) else str(raw)

    async def put(
        self,
        subject: bytes | None,
        like_id: str | None,
        params: dict[str, Any],
        hits: list[SearchHit],
        generation: int | None,
        embedding: tuple[str, str] | None = None,
    ) -> None:
        """Store ``hits`` as of ``generation`` (the one read before the search was asked)
        and the query's ``embedding`` (model id, packed vector) in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        if generation is not None and self.result_ttl_s > 0:
            value = b"%d:%s" % (generation, _HITS.dump_json(hits))
            pipe.set(self._result_key(subject, like_id, params), value, ex=self.result_ttl_s)
        if embedding is not None and subject is not None and self.embedding_ttl_s > 0:
            model_id, vector = embedding
            key = self._embedding_key(subject, model_id)
            pipe.set(key, vector, ex=self.embedding_ttl_s)
        if not len(pipe):
            return
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            self._unavailable(exc)


def _bytes(value: bytes | str | None) -> bytes:
    """A value as this client returns it (bytes: it does not decode responses)."""
    return value.encode() if isinstance(value, str) else value or b""


class GenerationWatch:
    """Tells waiting writes when the indexer has applied a batch: the generation counter
    moves after every batch that changed the store.

    One task per process reads the counter every ``every_s`` while at least one caller
    waits (a GET each time, however many wait), and stops when none does. A caller
    reads the counter before it asks the indexer, then waits until the counter differs
    from that value, so a batch applied between the two is not missed. Redis down: the
    counter never moves here, and each wait ends at its timeout.
    """

    def __init__(self, redis: Redis, key: str, every_s: float = 0.02) -> None:
        self.redis = redis
        self.key = key
        self.every_s = every_s
        self._value: bytes | None = None
        self._read = asyncio.Condition()
        self._waiting = 0
        self._task: asyncio.Task[None] | None = None

    async def current(self) -> bytes | None:
        """The counter now (the waiters see it too); None when it is not set or Redis
        cannot be reached."""
        try:
            value = await self.redis.get(self.key)
        except (RedisError, OSError):
            return None
        if value is None:
            return None
        counter = _bytes(value)
        async with self._read:
            self._value = counter
            self._read.notify_all()
        return counter

    async def moved_from(self, seen: bytes | None, timeout_s: float) -> bool:
        """Wait until the counter differs from ``seen``: True, or False after ``timeout_s``."""
        self._waiting += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._watch(), name="imgsim-generation-watch")
        try:
            async with asyncio.timeout(timeout_s), self._read:
                await self._read.wait_for(lambda: self._value not in (None, seen))
            return True
        except TimeoutError:
            return False
        finally:
            self._waiting -= 1

    async def close(self) -> None:
        await cancel_and_wait(self._task)

    async def _watch(self) -> None:
        while self._waiting:
            await self.current()
            await pause(self.every_s)
