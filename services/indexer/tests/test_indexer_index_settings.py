"""The index settings reach both stores: the shard's or collection's configuration, and
every search's parameters."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import pytest
import qdrant_edge as qe
from indexer_samples import DIM, QDRANT_URL, make_point, unit_vector
from qdrant_client import AsyncQdrantClient, models

from imgsim_core.settings import QdrantSettings, VectorIndexSettings
from imgsim_indexer.edge_setup import edge_config, read_in
from imgsim_indexer.edge_store import EdgeStore
from imgsim_indexer.server_setup import field_schema
from imgsim_indexer.server_store import ServerStore
from imgsim_indexer.settings import IndexerSettings

INT8 = VectorIndexSettings(
    quantization="int8",
    hnsw_m=8,
    search_ef=32,
    indexing_threshold_kb=1,
    max_segment_size_kb=50_000,
)


async def test_an_int8_edge_shard_builds_its_index_and_rescores_from_the_originals(
    tmp_path: Path,
) -> None:
    settings = QdrantSettings(path=tmp_path, collection="images", index=INT8)
    store = EdgeStore(settings, DIM)
    await store.open()
    await store.upsert([make_point(f"img-{i}", i) for i in range(300)])
    shard = store._opened()
    assert shard.optimize()  # the build the indexing threshold of 1 KB asks for
    assert shard.info().indexed_vectors_count == 300

    hits = await store.search(unit_vector(42), top_k=3, threshold=None, with_metadata=False)

    assert hits[0].image_id == "img-42"
    # Rescored from the float32 originals: int8 scores alone are off by ~1e-2.
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    await store.close()

    reopened = EdgeStore(settings, DIM)  # the shard keeps its quantization on disk
    await reopened.open()
    assert reopened._opened().info().indexed_vectors_count == 300
    assert [h.image_id for h in await reopened.search(
        unit_vector(7), top_k=1, threshold=None, with_metadata=False
    )] == ["img-7"]  # fmt: skip
    await reopened.close()


def test_the_edge_shard_is_configured_with_the_graph_and_optimizer_settings() -> None:
    config = edge_config(DIM, INT8.model_copy(update={"segments": 3}))
    assert config.hnsw_config is not None
    assert config.hnsw_config.m == 8
    optimizers = config.optimizers
    assert optimizers is not None
    assert (optimizers.indexing_threshold, optimizers.default_segment_number) == (1, 3)
    assert optimizers.max_segment_size == 50_000
    defaults = edge_config(DIM, VectorIndexSettings())
    assert defaults.optimizers is not None
    assert defaults.optimizers.max_segment_size is None  # Qdrant's own, from the CPUs
    # Qdrant's extra edges for each indexed payload value stay (payload_m = m): built
    # without them a 10 % filter found 0.066 of its exact top-10 (bench/RESULTS.md).
    assert defaults.hnsw_config is not None
    assert defaults.hnsw_config.payload_m is None


async def test_on_disk_maps_the_vectors_codes_and_payload_indexes(tmp_path: Path) -> None:
    mapped, in_ram = (
        edge_config(DIM, INT8),
        edge_config(DIM, INT8.model_copy(update={"on_disk": False})),
    )
    assert mapped.vectors[""].memory == qe.Memory.Cold
    assert isinstance(mapped.quantization_config, qe.ScalarQuantizationConfig)
    assert mapped.quantization_config.memory == qe.Memory.Cold
    assert in_ram.vectors[""].memory == qe.Memory.Cached  # read in when the shard loads
    assert isinstance(in_ram.quantization_config, qe.ScalarQuantizationConfig)
    assert in_ram.quantization_config.memory == qe.Memory.Pinned
    for on_disk, placed in ((True, qe.Memory.Cold), (False, qe.Memory.Pinned)):
        index = VectorIndexSettings(on_disk=on_disk)
        settings = QdrantSettings(path=tmp_path / str(on_disk), index=index)
        store = EdgeStore(settings, DIM, payload_indexes={"tag": "keyword", "n": "integer"})
        await store.open()
        schema = store._opened().info().payload_schema
        params = {path: info.params for path, info in schema.items()}
        assert {path: p and p.memory for path, p in params.items()} == {
            "metadata.tag": placed, "metadata.n": placed, "content_sha256": placed
        }  # fmt: skip
        await store.close()


def test_read_in_reads_every_file_under_a_shard_and_stops_when_told(tmp_path: Path) -> None:
    (tmp_path / "segments" / "a").mkdir(parents=True)
    (tmp_path / "segments" / "a" / "vectors").write_bytes(b"v" * 3_000_000)
    (tmp_path / "wal").write_bytes(b"w" * 10)
    assert read_in(tmp_path) == 3_000_010
    assert read_in(tmp_path, stop=lambda: True) == 0
    assert read_in(tmp_path / "gone") == 0  # a generation a build removed meanwhile


async def test_a_mapped_shard_is_read_in_after_it_opens_and_still_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = QdrantSettings(path=tmp_path, collection="images", index=INT8)
    store = EdgeStore(settings, DIM)
    await store.open()
    await store.upsert([make_point(f"img-{i}", i) for i in range(50)])
    await store.close()
    reopened = EdgeStore(settings, DIM)
    with caplog.at_level(logging.INFO, logger="imgsim_indexer.edge_store"):
        await reopened.open()
        hits = await reopened.search(unit_vector(7), top_k=1, threshold=None, with_metadata=False)
        assert reopened._reading is not None
        await reopened._reading
    assert [h.image_id for h in hits] == ["img-7"]
    assert any("read in qdrant-edge shard" in r.getMessage() for r in caplog.records)
    await reopened.close()


async def test_a_server_collection_is_created_with_the_index_settings() -> None:
    client = AsyncQdrantClient(location=":memory:")
    settings = QdrantSettings(url="http://unused", collection="images", index=INT8)
    store = ServerStore(settings, DIM, client=client)
    await store.open()
    await store.upsert([make_point(f"img-{i}", i) for i in range(20)])

    hits = await store.search(unit_vector(5), top_k=1, threshold=None, with_metadata=False)

    assert [h.image_id for h in hits] == ["img-5"]
    # qdrant-client's local mode keeps where the vectors live, not the HNSW or the
    # quantization it was given (a real server applies them); every search asks for these:
    vectors = (await client.get_collection("images_v1")).config.params.vectors
    assert isinstance(vectors, models.VectorParams)
    assert vectors.on_disk is True  # int8: the originals on disk
    params = store._search_params
    assert params.hnsw_ef == 32
    assert params.quantization is not None
    assert params.quantization.rescore is True
    assert params.quantization.oversampling == 2.0
    await store.close()
    await client.close()


async def test_a_server_collection_maps_its_float32_vectors_with_on_disk() -> None:
    for on_disk, expected in ((True, True), (False, None)):
        client = AsyncQdrantClient(location=":memory:")
        index = VectorIndexSettings(on_disk=on_disk)
        settings = QdrantSettings(url="http://unused", collection="images", index=index)
        store = ServerStore(settings, DIM, client=client)
        await store.open()
        vectors = (await client.get_collection("images_v1")).config.params.vectors
        assert isinstance(vectors, models.VectorParams)
        assert vectors.on_disk is expected
        await store.close()
        await client.close()
    mapped = field_schema("integer", on_disk=True)
    assert isinstance(mapped, models.IntegerIndexParams)
    assert (mapped.on_disk, mapped.lookup, mapped.range) == (True, True, True)
    assert field_schema("keyword", on_disk=False) == models.PayloadSchemaType.KEYWORD


@pytest.mark.skipif(QDRANT_URL is None, reason="needs IMGSIM_TEST_QDRANT_URL (a Qdrant server)")
async def test_a_real_server_builds_the_int8_index_and_rescores_from_the_originals() -> None:
    assert QDRANT_URL is not None
    client = AsyncQdrantClient(url=QDRANT_URL, check_compatibility=False)
    settings = QdrantSettings(url=QDRANT_URL, collection=f"t{uuid.uuid4().hex[:10]}", index=INT8)
    store = ServerStore(settings, DIM, client=client)
    await store.open()
    try:
        await store.upsert([make_point(f"img-{i}", i) for i in range(300)])
        assert store.current is not None
        for _ in range(300):  # the server's optimizer builds in the background
            info = await client.get_collection(store.current)
            if info.indexed_vectors_count == 300 and info.status == models.CollectionStatus.GREEN:
                break
            await asyncio.sleep(0.1)
        assert info.indexed_vectors_count == 300
        assert info.config.hnsw_config.m == 8
        assert info.config.optimizer_config.max_segment_size == 50_000
        quantization = info.config.quantization_config
        assert isinstance(quantization, models.ScalarQuantization)
        assert quantization.scalar.type == models.ScalarType.INT8
        assert quantization.scalar.always_ram is False  # on_disk: the codes mapped too

        hits = await store.search(unit_vector(42), top_k=3, threshold=None, with_metadata=False)

        assert hits[0].image_id == "img-42"
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)  # rescored from float32
    finally:
        await store.close()
        await client.delete_collection(store.current or "")
        await client.close()


def test_the_index_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INDEXER_QDRANT__INDEX__QUANTIZATION", "int8")
    monkeypatch.setenv("INDEXER_QDRANT__INDEX__SEARCH_EF", "256")
    index = IndexerSettings().qdrant.index
    assert (index.quantization, index.search_ef, index.hnsw_m) == ("int8", 256, 16)
    monkeypatch.setenv("INDEXER_QDRANT__INDEX__QUANTIZATION", "pq")
    with pytest.raises(ValueError, match="quantization"):
        IndexerSettings()
