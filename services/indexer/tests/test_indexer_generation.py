"""The result-cache generation: bumped after each batch that wrote, never failing one.

The tests that need a real ``redis-server`` start one on a free port, are marked
``integration`` (so ``make test-unit`` starts no server) and are skipped where it is not
installed.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker
from indexer_samples import DIM, MODEL, make_point, unit_vector
from redis.asyncio import Redis

from imgsim_core.contracts import ImageEmbedded, ImageRecord, LookupRequested, pack_vector
from imgsim_core.kafka import now_ms
from imgsim_core.redisclient import generation_key, make_redis
from imgsim_core.settings import QdrantSettings, RedisSettings
from imgsim_devstack.processes import RedisServer, free_port
from imgsim_indexer.cache import RollbackWatch, bump_generation
from imgsim_indexer.edge_store import EdgeStore
from imgsim_indexer.handlers import IndexerState, build_router
from imgsim_indexer.serving import Collections
from imgsim_indexer.settings import IndexerSettings

SETTINGS = IndexerSettings(dim=DIM, model=MODEL)
KEY = generation_key(SETTINGS.kafka.topic_prefix)
needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)


def embedded(image_id: str) -> ImageEmbedded:
    """A vectors-topic record's body for ``image_id``."""
    return ImageEmbedded(
        image_id=image_id,
        model_id=MODEL.model_id,
        dim=DIM,
        vector=pack_vector(unit_vector(1)),
        embedded_at=make_point("x", 0).indexed_at,
    )


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("redis")
    server = RedisServer("redis", base / "redis.log", data_dir=base, port=free_port())
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = make_redis(RedisSettings(url=redis_url))
    await client.delete(KEY)
    yield client
    await client.aclose()


async def test_unreachable_redis_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    client = make_redis(RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2))

    assert await bump_generation(client, KEY, timeout_s=0.2) is None

    await client.aclose()
    assert "could not bump the result-cache generation" in caplog.text


@needs_redis
@pytest.mark.integration  # a real redis-server: not part of `make test-unit`
async def test_bump_increments(redis: Redis) -> None:
    assert await bump_generation(redis, KEY, timeout_s=1) == 1
    assert await bump_generation(redis, KEY, timeout_s=1) == 2
    assert await redis.get(KEY) == b"2"


@needs_redis
@pytest.mark.integration  # a real redis-server: not part of `make test-unit`
async def test_a_batch_that_writes_bumps_the_generation(redis: Redis, tmp_path: Path) -> None:
    store = EdgeStore(QdrantSettings(path=tmp_path), DIM)
    await store.open()
    rollback = RollbackWatch(KEY, timeout_s=1)
    state = IndexerState(Collections(store, SETTINGS), redis=redis, rollback=rollback)
    broker = KafkaBroker()
    broker.include_router(build_router(SETTINGS, state))
    event = embedded("new")
    try:
        async with TestKafkaBroker(broker) as test_broker:
            await test_broker.publish(
                event.model_dump_json(), SETTINGS.kafka.topics.vectors, key=b"new"
            )
            assert await redis.get(KEY) == b"1"

            await test_broker.publish(None, SETTINGS.kafka.topics.vectors, key=b"new")  # delete
            assert await redis.get(KEY) == b"2"
            assert await store.count() == 0
            assert rollback.highest == 2  # the bumps are what a rollback is measured from
    finally:
        await store.close()


class HeldIncr:
    """A real client whose ``INCR`` waits until the test lets it through."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def incr(self, key: str) -> Any:
        self.entered.set()
        await self.release.wait()
        return await self.client.incr(key)


@needs_redis
@pytest.mark.integration  # a real redis-server: not part of `make test-unit`
async def test_a_lookup_shows_a_write_only_once_its_generation_moved(
    redis: Redis, tmp_path: Path
) -> None:
    """A write that waits is answered when a lookup shows it; were the lookup answered
    between the batch's upsert and its bump, a search right after could be served a
    result cached before the write. A lookup of an id the batch does not write is
    answered meanwhile."""
    store = EdgeStore(QdrantSettings(path=tmp_path), DIM)
    await store.open()
    held = HeldIncr(redis)
    settings = SETTINGS.model_copy(update={"redis": RedisSettings(timeout_s=30)})
    broker = KafkaBroker()
    state = IndexerState(Collections(store, settings), redis=held)  # type: ignore[arg-type]
    broker.include_router(build_router(settings, state))
    event = embedded("new")
    lookup = LookupRequested(image_id="new", deadline_ms=now_ms() + 10_000)
    try:
        async with TestKafkaBroker(broker) as test_broker:
            batch = asyncio.create_task(
                test_broker.publish(
                    event.model_dump_json(), SETTINGS.kafka.topics.vectors, key=b"new"
                )
            )
            await asyncio.wait_for(held.entered.wait(), 5)  # upserted, bump not yet done
            assert await store.get("new") is not None
            asked = asyncio.create_task(
                test_broker.request(lookup, SETTINGS.kafka.topics.lookups, timeout=10)
            )
            done, _ = await asyncio.wait([asked], timeout=0.5)
            assert not done, "the lookup was answered before the generation moved"
            other = LookupRequested(image_id="other", deadline_ms=now_ms() + 10_000)
            reply = await test_broker.request(other, SETTINGS.kafka.topics.lookups, timeout=2)
            assert not ImageRecord.model_validate_json(reply.body).found  # no wait for it

            held.release.set()
            record = ImageRecord.model_validate_json((await asked).body)
            await batch
            assert record.found
            assert await redis.get(KEY) == b"1"
    finally:
        await store.close()


@needs_redis
@pytest.mark.integration  # a real redis-server: not part of `make test-unit`
async def test_a_generation_found_behind_is_moved_past_the_highest_seen(redis: Redis) -> None:
    """A Redis restarted from its snapshot (or a lagging replica promoted) holds an older
    generation and the results cached at it: the counter is moved past every value seen."""
    watch = RollbackWatch(KEY, timeout_s=1)
    watch.saw(await bump_generation(redis, KEY, timeout_s=1))
    for _ in range(6):
        watch.saw(await bump_generation(redis, KEY, timeout_s=1))
    assert watch.highest == 7
    assert await watch.check(redis) is None  # not behind: left alone
    assert await redis.get(KEY) == b"7"

    await redis.set(KEY, 3)  # what a restore from an older snapshot leaves
    assert await watch.check(redis) == 8
    assert await redis.get(KEY) == b"8"

    await redis.delete(KEY)  # restarted with no data: nothing to hide, moved past anyway
    assert await watch.check(redis) == 9


async def eventually(condition: Callable[[], bool], timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.01)


@needs_redis
@pytest.mark.integration  # a real redis-server: not part of `make test-unit`
async def test_the_watch_runs_until_cancelled_and_counts_other_indexers_bumps(
    redis: Redis,
) -> None:
    watch = RollbackWatch(KEY, timeout_s=1, every_s=0.01)
    task = asyncio.create_task(watch.run(redis))
    try:
        await redis.set(KEY, 5)  # another indexer's bumps: seen, not moved
        await eventually(lambda: watch.highest == 5)
        assert await redis.get(KEY) == b"5"

        await redis.set(KEY, 2)
        await eventually(lambda: watch.highest == 6)
        assert await redis.get(KEY) == b"6"
    finally:
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=5)
    assert done, "the watch went on after its cancellation"


@needs_redis
@pytest.mark.integration  # a real redis-server: not part of `make test-unit`
async def test_the_watch_ends_whenever_it_is_cancelled(redis: Redis) -> None:
    """redis-py loses a cancellation that comes as a command's write completes (Python
    3.11's ``asyncio.wait_for``); the watch must end all the same, or the indexer's
    shutdown would wait for it forever."""
    for attempt in range(200):
        watch = RollbackWatch(KEY, timeout_s=1, every_s=0)
        task = asyncio.create_task(watch.run(redis))
        await asyncio.sleep(0.0005 * (attempt % 7))  # at all moments of a round
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2)
        assert done, f"attempt {attempt}: the watch went on after its cancellation"


async def test_an_unreachable_redis_is_looked_at_again_later() -> None:
    client = make_redis(RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2))
    watch = RollbackWatch(KEY, timeout_s=0.2)
    watch.saw(4)

    assert await watch.check(client) is None

    await client.aclose()
    assert watch.highest == 4


class BumpedDuringGet:
    """A GET answered before a bump that another connection's reply shows first."""

    def __init__(self, value: int, watch: RollbackWatch) -> None:
        self.value = value
        self.watch = watch

    async def get(self, key: str) -> bytes:
        self.watch.saw(self.value + 1)  # the batch's INCR came back meanwhile
        return str(self.value).encode()

    async def incrby(self, key: str, amount: int) -> int:
        raise AssertionError("moved although the counter never went back")


async def test_a_bump_seen_while_the_get_travels_is_not_a_rollback() -> None:
    watch = RollbackWatch(KEY, timeout_s=1)
    watch.saw(9)

    assert await watch.check(BumpedDuringGet(9, watch)) is None  # type: ignore[arg-type]

    assert watch.highest == 10
