"""The alias side of a reindex, on both stores: new collections, the switch, dropping old ones."""

from __future__ import annotations

import pytest
from indexer_samples import DIM, make_point
from qdrant_client import AsyncQdrantClient

from imgsim_indexer.app import check_model
from imgsim_indexer.edge_store import EdgeStore
from imgsim_indexer.errors import StoreConfigError, StoreError
from imgsim_indexer.reindex import Reindexer
from imgsim_indexer.server_store import ServerStore
from imgsim_indexer.serving import Collections
from imgsim_indexer.settings import IndexerSettings
from imgsim_indexer.store import VectorStore


def physical(store: VectorStore, name: str, client: AsyncQdrantClient | None) -> VectorStore:
    if isinstance(store, EdgeStore):
        settings = IndexerSettings().qdrant.model_copy(update={"path": store.root.parent})
        return EdgeStore(settings, DIM, physical=name)
    assert isinstance(store, ServerStore)
    return ServerStore(store.settings, DIM, client=client, physical=name)


async def test_switch_then_drop_old(store: VectorStore) -> None:
    client = getattr(store, "_client", None)
    v1, v2 = f"{store.collection}_v1", f"{store.collection}_v2"
    await store.upsert([make_point("old", 1)])
    assert await store.collections() == [v1]
    assert await store.aliased() == v1

    new = physical(store, v2, client)
    await new.open()
    await new.upsert([make_point("new", 2)])
    assert await store.collections() == [v1, v2]
    await new.switch_alias(v2)
    assert await store.aliased() == v2

    with pytest.raises(StoreError):
        await new.drop_collection(v2)  # the alias points at it
    await store.close()
    await new.drop_collection(v1)
    assert await new.collections() == [v2]
    hits = await new.search(make_point("x", 2).vector, top_k=5, threshold=None, with_metadata=False)
    assert [h.image_id for h in hits] == ["new"]
    await new.close()


async def test_a_store_keeps_its_collection_when_the_alias_moves(store: VectorStore) -> None:
    """After a model change's switch the old model's store keeps taking that model's
    vectors: they must land in its own collection, never in the new one's."""
    client = getattr(store, "_client", None)
    v1, v2 = f"{store.collection}_v1", f"{store.collection}_v2"
    new = physical(store, v2, client)
    await new.open()
    await new.switch_alias(v2)

    await store.upsert([make_point("old-model", 1)])

    assert store.current == v1
    assert await store.count() == 1
    assert await new.count() == 0
    assert await new.get("old-model") is None
    await new.close()


async def test_retention_drops_the_old_collection_after_a_switch(store: VectorStore) -> None:
    client = getattr(store, "_client", None)
    v2 = f"{store.collection}_v2"
    new = physical(store, v2, client)
    await new.open()
    await new.switch_alias(v2)
    await store.close()
    settings = IndexerSettings(reindex_retention_s=0)
    reindexer = Reindexer(settings, Collections(new, settings), lambda n: physical(new, n, client))
    await reindexer._drop_later(0)  # what a switch schedules with the retention setting
    assert await new.collections() == [v2]
    status = await reindexer.status()
    assert status.collection == v2
    assert status.old_collections == []
    await new.close()


async def test_the_indexer_refuses_a_collection_of_another_model(store: VectorStore) -> None:
    await check_model(store, "any-model")  # empty: nothing to contradict
    await store.upsert([make_point("a", 1)])  # model "test-model"
    assert await store.sample_model() == "test-model"
    await check_model(store, "test-model")
    with pytest.raises(StoreConfigError, match="INDEXER_MODEL__"):
        await check_model(store, "ViT-B-32/laion2b_s34b_b79k")
