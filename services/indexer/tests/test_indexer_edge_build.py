"""Qdrant Edge's index builds: in a child process on a copy, with the writes made meanwhile
replayed into the built copy, searches answered throughout, and every way a build can end
short leaving the live shard whole."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import qdrant_edge as qe
from indexer_samples import DIM, make_point, unit_vector

from imgsim_core.settings import EdgeBuildSettings, QdrantSettings, VectorIndexSettings
from imgsim_indexer import edge_setup as setup
from imgsim_indexer.edge_child import BuildAbandoned
from imgsim_indexer.edge_store import EdgeStore
from imgsim_indexer.errors import StoreError

# Segments over 1 KB (16 vectors of 16 floats) are indexed; the watcher is off unless a
# test turns it on.
INDEX = VectorIndexSettings(indexing_threshold_kb=1, hnsw_m=8, search_ef=64)


def settings(tmp_path: Path, **build: object) -> QdrantSettings:
    return QdrantSettings(
        path=tmp_path,
        collection="images",
        index=INDEX,
        build=EdgeBuildSettings.model_validate({"enabled": False, **build}),
    )


async def filled(tmp_path: Path, n: int, **build: object) -> EdgeStore:
    store = EdgeStore(settings(tmp_path, **build), DIM)
    await store.open()
    await store.upsert([make_point(f"img-{i}", i) for i in range(n)])
    return store


async def search_ids(store: EdgeStore, seed: int, top_k: int = 1) -> list[str]:
    hits = await store.search(unit_vector(seed), top_k=top_k, threshold=None, with_metadata=False)
    return [h.image_id for h in hits]


async def until(done: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def disk(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "images").iterdir())


async def test_a_build_indexes_the_shard_and_keeps_the_writes_made_meanwhile(
    tmp_path: Path,
) -> None:
    store = await filled(tmp_path, 400)
    assert store._opened().info().indexed_vectors_count == 0
    assert await store.builds.pending() == 400

    build = asyncio.create_task(store.builds.build())
    await until(lambda: store.journal is not None)  # the copy is made; the child builds it
    await store.upsert([make_point(f"new-{i}", 1000 + i) for i in range(30)])
    await store.delete(["img-7"])
    report = await build

    info = store._opened().info()
    assert info.points_count == 429 == report.points == await store.count()
    assert info.indexed_vectors_count >= 400  # the copy's points, now in an HNSW segment
    assert report.journaled == 31
    # The points written meanwhile are unindexed in the built shard: the next build's.
    assert await store.builds.pending() >= 29
    assert await search_ids(store, 1005) == ["new-5"]  # written during the build
    assert "img-7" not in await search_ids(store, 7, top_k=5)  # deleted during the build
    # One generation, linked; the one it replaced is gone.
    assert disk(tmp_path) == [".images_v1.b1", "CURRENT", "images_v1"]
    assert (tmp_path / "images" / "images_v1").readlink() == Path(".images_v1.b1")
    await store.close()

    reopened = EdgeStore(settings(tmp_path), DIM)
    await reopened.open()
    assert reopened._opened().info().indexed_vectors_count >= 400
    assert await reopened.count() == 429
    assert await search_ids(reopened, 1029) == ["new-29"]
    await reopened.close()


async def test_searches_are_answered_while_the_child_builds(tmp_path: Path) -> None:
    store = await filled(tmp_path, 2000)
    build = asyncio.create_task(store.builds.build())
    answered: list[float] = []
    while not build.done():
        if store.journal is not None:  # between the copy and the switch
            assert await search_ids(store, 3) == ["img-3"]
            answered.append(time.perf_counter())
        else:
            await asyncio.sleep(0.005)
    await build

    # In the indexer's process optimize() would hold the GIL and stop this loop.
    assert len(answered) >= 20
    assert store._opened().info().indexed_vectors_count == 2000
    await store.close()


async def test_a_build_with_too_many_writes_meanwhile_is_abandoned(tmp_path: Path) -> None:
    store = await filled(tmp_path, 300, journal_max_points=10)
    build = asyncio.create_task(store.builds.build())
    await until(lambda: store.journal is not None)
    await store.upsert([make_point(f"new-{i}", 1000 + i) for i in range(11)])

    with pytest.raises(BuildAbandoned, match="more than 10 points"):
        await build

    assert store.journal is None
    assert disk(tmp_path) == [".images_v1.b0", "CURRENT", "images_v1"]  # the copy is gone
    assert await store.count() == 311  # the live shard kept every write
    assert store._opened().info().indexed_vectors_count == 0
    await store.upsert([make_point("after", 2000)])  # and takes more
    assert await search_ids(store, 2000) == ["after"]
    await store.close()


async def test_a_failed_child_leaves_the_live_shard_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await filled(tmp_path, 100)
    monkeypatch.setattr(sys, "executable", "/bin/false")  # the child it starts

    with pytest.raises(StoreError, match="exited with 1"):
        await store.builds.build()

    assert store.journal is None
    assert disk(tmp_path) == [".images_v1.b0", "CURRENT", "images_v1"]
    assert await store.count() == 100
    await store.close()


async def test_closing_during_a_build_stops_it(tmp_path: Path) -> None:
    store = await filled(tmp_path, 2000, enabled=True, check_s=0.05, min_points=100)
    await until(lambda: store.journal is not None)  # the watcher started a build by itself

    await store.close()

    assert disk(tmp_path) == [".images_v1.b0", "CURRENT", "images_v1"]
    reopened = EdgeStore(settings(tmp_path), DIM)
    await reopened.open()
    assert await reopened.count() == 2000
    await reopened.close()


async def test_the_watcher_builds_once_enough_points_wait(tmp_path: Path) -> None:
    store = await filled(tmp_path, 50, enabled=True, check_s=0.05, min_points=100)
    await asyncio.sleep(0.3)
    assert store.builds.last is None  # 50 < 100: no build

    await store.upsert([make_point(f"more-{i}", 100 + i) for i in range(60)])
    await until(lambda: store.builds.last is not None)

    assert store.builds.last is not None
    assert store.builds.last.points == 110
    assert await store.builds.pending() < 100  # nothing more to build: no second build
    await store.close()


def test_settle_moves_a_shard_of_the_older_layout_to_generation_0(tmp_path: Path) -> None:
    old = tmp_path / "images_v1"
    qe.EdgeShard.create(str(old), setup.edge_config(DIM, INDEX)).close()

    live = setup.settle(tmp_path, "images_v1")

    assert live == (tmp_path / ".images_v1.b0").resolve()
    assert (tmp_path / "images_v1").is_symlink()
    assert (live / "edge_config.json").exists()


def test_settle_keeps_the_linked_generation_and_removes_the_others(tmp_path: Path) -> None:
    for k in (0, 1, 2):
        (tmp_path / f".images_v1.b{k}").mkdir()
    setup.point_link(tmp_path / "images_v1", tmp_path / ".images_v1.b1")
    (tmp_path / ".images_v1.link").symlink_to(".images_v1.b2")  # a switch cut short

    live = setup.settle(tmp_path, "images_v1")

    assert live == (tmp_path / ".images_v1.b1").resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".images_v1.b1", "images_v1"]


def test_settle_links_generation_0_when_its_link_was_never_made(tmp_path: Path) -> None:
    (tmp_path / ".images_v1.b0").mkdir()

    assert setup.settle(tmp_path, "images_v1") == (tmp_path / ".images_v1.b0").resolve()
    assert setup.settle(tmp_path, "images_v2") is None  # no shard at all


async def test_dropping_a_collection_removes_its_link_and_generations(tmp_path: Path) -> None:
    old = await filled(tmp_path, 100)
    await old.builds.build()  # generation 1
    await old.close()
    new = EdgeStore(settings(tmp_path), DIM, physical="images_v2")
    await new.open()
    await new.switch_alias("images_v2")

    await new.drop_collection("images_v1")

    assert disk(tmp_path) == [".images_v2.b0", "CURRENT", "images_v2"]
    assert await new.collections() == ["images_v2"]
    await new.close()
