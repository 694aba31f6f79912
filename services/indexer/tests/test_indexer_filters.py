"""Metadata filters, search by id and payload indexes on both stores.

Some keys have a payload index (tags, year, score, ok) and some do not (color, rating):
filters must give the same answers either way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import qdrant_edge as qe
from indexer_samples import DIM, STORE_KINDS, edge_settings, make_point, opened_store, unit_vector
from qdrant_client import AsyncQdrantClient

from imgsim_core.contracts import SearchParams
from imgsim_core.settings import QdrantSettings
from imgsim_indexer.edge_store import EdgeStore
from imgsim_indexer.errors import BadFilterError
from imgsim_indexer.filters import AnyOf, Between, Match, MatchAny, clauses
from imgsim_indexer.server_store import ServerStore
from imgsim_indexer.store import VectorStore

INDEXES = {"tags": "keyword", "year": "integer", "score": "float", "ok": "bool"}
METADATA: dict[str, dict[str, Any]] = {
    "a": {"tags": ["cat", "pet"], "year": 2019, "score": 0.5, "ok": True, "color": "red"},
    "b": {"tags": ["dog", "pet"], "year": 2020, "score": 1.5, "ok": False, "color": "blue"},
    "c": {"tags": "cat", "year": 2021, "score": 2.5, "ok": True, "color": "red", "rating": 3},
    "d": {"tags": [], "year": 2022, "score": 3.0, "ok": False, "color": "green", "rating": 3.5},
}

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")


def server_store(client: AsyncQdrantClient) -> ServerStore:
    settings = QdrantSettings(url="http://unused", collection="images")
    return ServerStore(settings, DIM, client=client, payload_indexes=INDEXES)


@pytest.fixture(params=STORE_KINDS)
async def indexed(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    async with opened_store(request.param, tmp_path, INDEXES) as opened:
        points = [make_point(i_d, i, meta) for i, (i_d, meta) in enumerate(METADATA.items())]
        await opened.upsert(points)
        yield opened


async def found(store: VectorStore, conditions: dict[str, Any]) -> set[str]:
    # Through the contract's own parsing, as a request would arrive.
    params = SearchParams.model_validate({"filter": conditions})
    hits = await store.search(
        unit_vector(0), top_k=10, threshold=None, with_metadata=False, filter=params.filter
    )
    return {h.image_id for h in hits}


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        pytest.param({"color": "red"}, {"a", "c"}, id="keyword-unindexed"),
        pytest.param({"tags": "cat"}, {"a", "c"}, id="list-field-any-item"),
        pytest.param({"tags": ["dog", "cat"]}, {"a", "b", "c"}, id="any-of-values"),
        pytest.param({"year": 2020}, {"b"}, id="int-exact"),
        pytest.param({"year": [2019, 2022]}, {"a", "d"}, id="any-of-ints"),
        pytest.param({"year": {"gte": 2020, "lt": 2022}}, {"b", "c"}, id="int-range"),
        pytest.param({"score": {"gt": 1.0, "lte": 3.0}}, {"b", "c", "d"}, id="float-range"),
        pytest.param({"score": 2.5}, {"c"}, id="float-exact"),
        pytest.param({"rating": 3.5}, {"d"}, id="float-exact-unindexed"),
        pytest.param({"rating": {"gte": 3}}, {"c", "d"}, id="range-over-int-and-float"),
        pytest.param({"ok": True}, {"a", "c"}, id="bool-true"),
        pytest.param({"ok": False}, {"b", "d"}, id="bool-false"),
        pytest.param({"ok": [True]}, {"a", "c"}, id="list-of-bool"),
        pytest.param({"year": [2019, "x", 2022.0, True]}, {"a", "d"}, id="mixed-list"),
        pytest.param({"tags": "pet", "year": {"gte": 2020}}, {"b"}, id="all-must-hold"),
        pytest.param({"color": "red", "ok": False}, set(), id="combined-none"),
        pytest.param({"nope": "x"}, set(), id="unknown-key"),
        pytest.param({"tags": []}, set(), id="empty-list"),
        pytest.param({}, {"a", "b", "c", "d"}, id="empty-filter"),
    ],
)
async def test_filter(indexed: VectorStore, conditions: dict[str, Any], expected: set[str]) -> None:
    assert await found(indexed, conditions) == expected


async def test_filter_and_exclude_together(indexed: VectorStore) -> None:
    hits = await indexed.search(
        unit_vector(0),
        top_k=10,
        threshold=None,
        with_metadata=True,
        filter={"color": "red"},
        exclude=["a"],
    )

    assert [(h.image_id, h.metadata) for h in hits] == [("c", METADATA["c"])]


async def test_integer_outside_int64_is_a_bad_filter(indexed: VectorStore) -> None:
    with pytest.raises(BadFilterError, match="64-bit"):
        await found(indexed, {"year": 2**70})


async def test_get_vector_returns_the_stored_vector(indexed: VectorStore) -> None:
    stored = await indexed.get_vector("c")

    assert stored is not None
    np.testing.assert_allclose(stored, unit_vector(2), atol=1e-6)
    assert await indexed.get_vector("missing") is None


async def test_search_like_a_stored_image_leaves_it_out(indexed: VectorStore) -> None:
    vector = await indexed.get_vector("b")
    assert vector is not None

    hits = await indexed.search(
        vector, top_k=10, threshold=None, with_metadata=False, exclude=["b"]
    )

    assert {h.image_id for h in hits} == {"a", "c", "d"}


async def test_edge_payload_indexes_created_once_and_kept(tmp_path: Path) -> None:
    first = EdgeStore(edge_settings(tmp_path), DIM, payload_indexes={"tags": "keyword"})
    await first.open()
    await first.upsert([make_point("a", 1, {"tags": ["x"], "year": 2020})])
    await first.close()

    again = EdgeStore(edge_settings(tmp_path), DIM, payload_indexes=INDEXES)
    await again.open()  # the existing index stays, the new ones are added
    try:
        shard = again._shard  # the test reads the shard's own schema
        assert shard is not None
        schema = {k: v.data_type for k, v in shard.info().payload_schema.items()}
        assert schema == {
            "metadata.tags": qe.PayloadSchemaType.Keyword,
            "metadata.year": qe.PayloadSchemaType.Integer,
            "metadata.score": qe.PayloadSchemaType.Float,
            "metadata.ok": qe.PayloadSchemaType.Bool,
            "content_sha256": qe.PayloadSchemaType.Keyword,  # always: exact duplicates
        }
        assert await found(again, {"tags": "x", "year": 2020}) == {"a"}
    finally:
        await again.close()


async def test_server_payload_indexes_survive_reopen() -> None:
    client = AsyncQdrantClient(location=":memory:")
    first = server_store(client)
    await first.open()
    await first.upsert([make_point("a", 1, {"tags": ["x"]})])

    again = server_store(client)
    await again.open()

    assert await found(again, {"tags": "x"}) == {"a"}
    await client.close()


def test_clauses_of_a_mixed_list() -> None:
    [clause] = clauses({"k": ["a", 1, "b", True, 2.5, 1, 1.0]})

    assert clause == AnyOf(
        (
            MatchAny("metadata.k", ["a", "b"]),
            MatchAny("metadata.k", [1]),
            Match("metadata.k", True),
            Between("metadata.k", gte=2.5, lte=2.5),
            Between("metadata.k", gte=1.0, lte=1.0),
        )
    )


def test_clauses_reject_non_finite_bounds() -> None:
    with pytest.raises(BadFilterError, match="finite"):
        clauses({"k": float("nan")})
