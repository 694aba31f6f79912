"""The store contract, run against Qdrant Edge (tmp_path) and qdrant-client's :memory:."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import qdrant_edge as qe
from indexer_samples import DIM, edge_settings, make_point, unit_vector
from qdrant_client import AsyncQdrantClient

from imgsim_core.settings import QdrantSettings
from imgsim_indexer.app import open_store
from imgsim_indexer.edge_setup import edge_config
from imgsim_indexer.edge_store import EdgeStore
from imgsim_indexer.errors import StoreConfigError, StoreNotOpenError
from imgsim_indexer.server_store import ServerStore
from imgsim_indexer.store import SLICE_POINTS, VectorStore


async def test_upsert_then_search_finds_itself_first(store: VectorStore) -> None:
    await store.upsert([make_point(f"img-{i}", i) for i in range(20)])

    hits = await store.search(unit_vector(7), top_k=5, threshold=None, with_metadata=True)

    assert hits[0].image_id == "img-7"
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].metadata == {"seed": 7}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


async def test_top_k_and_no_metadata(store: VectorStore) -> None:
    await store.upsert([make_point(f"img-{i}", i) for i in range(20)])

    hits = await store.search(unit_vector(3), top_k=4, threshold=None, with_metadata=False)

    assert len(hits) == 4
    assert hits[0].image_id == "img-3"
    assert all(h.metadata is None for h in hits)


async def test_threshold_filters(store: VectorStore) -> None:
    await store.upsert([make_point(f"img-{i}", i) for i in range(20)])

    hits = await store.search(unit_vector(5), top_k=20, threshold=0.99, with_metadata=False)

    assert [h.image_id for h in hits] == ["img-5"]


async def test_delete_removes(store: VectorStore) -> None:
    await store.upsert([make_point("a", 1), make_point("b", 2)])

    await store.delete(["a", "never-indexed"])

    assert await store.count() == 1
    assert await store.get("a") is None
    hits = await store.search(unit_vector(1), top_k=5, threshold=None, with_metadata=False)
    assert "a" not in {h.image_id for h in hits}


async def test_reupsert_replaces(store: VectorStore) -> None:
    await store.upsert([make_point("a", 1), make_point("b", 2)])

    await store.upsert([make_point("a", 3, {"version": 2})])

    assert await store.count() == 2
    stored = await store.get("a")
    assert stored is not None
    assert stored.metadata == {"version": 2}
    hits = await store.search(unit_vector(3), top_k=1, threshold=None, with_metadata=False)
    assert hits[0].image_id == "a"


async def test_count_and_get(store: VectorStore) -> None:
    assert await store.count() == 0
    point = make_point("a/b c.jpg", 1, {"tags": ["x", "y"], "n": 1.5})

    await store.upsert([point])

    assert await store.count() == 1
    stored = await store.get("a/b c.jpg")
    assert stored is not None
    assert stored.image_id == "a/b c.jpg"
    assert stored.model_id == "test-model"
    assert stored.metadata == {"tags": ["x", "y"], "n": 1.5}
    assert stored.indexed_at == point.indexed_at
    assert await store.get("missing") is None


async def test_empty_writes_are_no_ops(store: VectorStore) -> None:
    await store.upsert([])
    await store.delete([])

    assert await store.count() == 0


async def test_an_edge_write_goes_in_slices_and_searches_are_answered_between_them(
    tmp_path: Path,
) -> None:
    """A large upsert holds neither the event loop nor the store's thread for its whole
    length: a search asked meanwhile is answered before the upsert ends, and sees the
    slices written so far."""
    store = EdgeStore(edge_settings(tmp_path), DIM)
    await store.open()
    try:
        await store.upsert([make_point("first", 1)])
        points = [make_point(f"img-{i}", i + 2) for i in range(SLICE_POINTS * 6)]
        writing = asyncio.create_task(store.upsert(points))
        await asyncio.sleep(0)  # the write converts its first slice and hands it over

        seen = await store.count()
        hits = await store.search(unit_vector(1), top_k=1, threshold=None, with_metadata=False)

        assert not writing.done()
        assert 1 < seen < 1 + len(points)
        assert hits[0].image_id == "first"
        await writing
        assert await store.count() == 1 + len(points)
    finally:
        await store.close()


async def test_edge_reopen_keeps_data(tmp_path: Path) -> None:
    first = EdgeStore(edge_settings(tmp_path), DIM)
    await first.open()
    await first.upsert([make_point(f"img-{i}", i) for i in range(10)])
    await first.delete(["img-0"])
    await first.close()

    again = EdgeStore(edge_settings(tmp_path), DIM)
    await again.open()
    try:
        assert again.current == "images_v1"
        assert await again.count() == 9
        hits = await again.search(unit_vector(4), top_k=1, threshold=None, with_metadata=True)
        assert hits[0].image_id == "img-4"
        assert (tmp_path / "edge" / "images" / "CURRENT").read_text() == "images_v1"
    finally:
        await again.close()


_WRITE_AND_DIE = """
import asyncio, os, sys
from indexer_samples import DIM, edge_settings, make_point
from pathlib import Path
from imgsim_indexer.edge_store import EdgeStore

async def main():
    store = EdgeStore(edge_settings(Path(sys.argv[1])), DIM)
    await store.open()
    await store.upsert([make_point(f"img-{i}", i) for i in range(20)])
    await store.delete(["img-3"])
    os._exit(0)  # no close: as a kill would leave it

asyncio.run(main())
"""


async def test_a_new_edge_shard_keeps_no_log_and_its_flushed_writes_outlive_the_process(
    tmp_path: Path,
) -> None:
    """Kafka is the log: a write is flushed before the offsets may be committed."""
    tests = Path(__file__).parent
    command = [sys.executable, "-c", _WRITE_AND_DIE, str(tmp_path)]
    await asyncio.to_thread(subprocess.run, command, cwd=tests, check=True)
    shard = (tmp_path / "edge" / "images" / "images_v1").resolve()
    assert sorted(p.name for p in shard.iterdir()) == ["edge_config.json", "segments"]
    again = EdgeStore(edge_settings(tmp_path), DIM)
    await again.open()
    try:
        assert await again.count() == 19
        hits = await again.search(unit_vector(5), top_k=1, threshold=None, with_metadata=True)
        assert hits[0].image_id == "img-5"
    finally:
        await again.close()


async def test_an_edge_shard_made_with_a_log_keeps_it_and_takes_writes(tmp_path: Path) -> None:
    """Qdrant Edge fixes the log at creation; a shard of an older version loads as it is."""
    settings = edge_settings(tmp_path)
    old = tmp_path / "edge" / "images" / "images_v1"  # the layout before generations
    old.mkdir(parents=True)
    qe.EdgeShard.create(str(old), edge_config(DIM, settings.index, wal=True)).close()
    store = EdgeStore(settings, DIM)
    await store.open()
    try:
        await store.upsert([make_point(f"img-{i}", i) for i in range(5)])
        assert await store.count() == 5
        assert (old.resolve() / "wal").is_dir()
    finally:
        await store.close()


async def test_edge_reopen_with_another_dim_fails(tmp_path: Path) -> None:
    first = EdgeStore(edge_settings(tmp_path), DIM)
    await first.open()
    await first.close()

    other = EdgeStore(edge_settings(tmp_path), DIM * 2)
    with pytest.raises(StoreConfigError, match="dim"):
        await other.open()
    await other.close()


async def test_edge_use_before_open_fails(tmp_path: Path) -> None:
    with pytest.raises(StoreNotOpenError):
        await EdgeStore(edge_settings(tmp_path), DIM).count()


async def test_server_store_reaches_collection_through_alias() -> None:
    client = AsyncQdrantClient(location=":memory:")
    settings = QdrantSettings(url="http://unused", collection="images", shards=2)
    store = ServerStore(settings, DIM, client=client)
    await store.open()
    await store.upsert([make_point("a", 1)])

    again = ServerStore(settings, DIM, client=client)  # a second open finds the alias
    await again.open()

    assert again.current == "images_v1"
    aliases = (await client.get_aliases()).aliases
    assert [(a.alias_name, a.collection_name) for a in aliases] == [("images", "images_v1")]
    assert await again.count() == 1
    await client.close()


async def test_server_store_with_another_dim_fails() -> None:
    client = AsyncQdrantClient(location=":memory:")
    settings = QdrantSettings(url="http://unused", collection="images")
    await ServerStore(settings, DIM, client=client).open()

    with pytest.raises(StoreConfigError, match="dim"):
        await ServerStore(settings, DIM + 1, client=client).open()
    await client.close()


def test_open_store_picks_by_url(tmp_path: Path) -> None:
    assert open_store(edge_settings(tmp_path), DIM).name == "qdrant-edge"
    server = QdrantSettings(url="http://qdrant:6333")
    assert open_store(server, DIM).name == "qdrant-server"
