"""Searches by several examples, vectors on request, and duplicate groups, over a real
Qdrant Edge shard (the responders under TestKafkaBroker)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker
from indexer_samples import DIM, MODEL, STORE_KINDS, make_point, opened_store, unit_vector

from imgsim_core.contracts import (
    DuplicatesReplied,
    DuplicatesRequested,
    ImageRecord,
    LookupRequested,
    SearchReplied,
    Vector,
    VectorSearchRequested,
    pack_vector,
    unpack_vector,
)
from imgsim_core.kafka import now_ms
from imgsim_indexer.duplicates import find_duplicates
from imgsim_indexer.errors import RequestError
from imgsim_indexer.handlers import IndexerState, build_router
from imgsim_indexer.payload import Point
from imgsim_indexer.queries import combine
from imgsim_indexer.serving import Collections
from imgsim_indexer.settings import IndexerSettings
from imgsim_indexer.store import VectorStore

TOPICS = IndexerSettings().kafka.topics
SHORT = pack_vector(np.ones(3, dtype=np.float32))  # not the index's dim


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def near(seed: int, noise_seed: int, amount: float = 0.05) -> Vector:
    """A unit vector close to ``unit_vector(seed)`` (cosine ~0.99 at amount 0.05)."""
    vector = unit_vector(seed) + amount * unit_vector(noise_seed)
    normalised: Vector = (vector / np.linalg.norm(vector)).astype(np.float32)
    return normalised


def point(image_id: str, vector: Vector, content: str, **metadata: Any) -> Point:
    base = make_point(image_id, 0, metadata)
    return dataclasses.replace(base, vector=vector, content_sha256=sha(content))


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    async with opened_store(request.param, tmp_path, {"kind": "keyword"}) as opened:
        await opened.upsert(
            [
                point("cat-a", unit_vector(1), "cat bytes", kind="cat"),
                point("cat-copy", unit_vector(1), "cat bytes", kind="cat"),  # same bytes
                point("cat-resized", near(1, 50), "cat small", kind="cat"),  # near copy
                point("dog", unit_vector(2), "dog bytes", kind="dog"),
                point("dog-near", near(2, 51), "dog other", kind="dog"),
                *(
                    point(f"other-{i}", unit_vector(10 + i), f"other {i}", kind="x")
                    for i in range(6)
                ),
            ]
        )
        yield opened


def grouped(reply: DuplicatesReplied) -> list[set[str]]:
    return [{g.image_id, *(m.image_id for m in g.members)} for g in reply.groups]


async def duplicates(store: VectorStore, **fields: Any) -> DuplicatesReplied:
    return await find_duplicates(store, DuplicatesRequested(deadline_ms=0, **fields))


async def test_exact_duplicates_are_the_same_bytes_only(store: VectorStore) -> None:
    reply = await duplicates(store)

    assert grouped(reply) == [{"cat-a", "cat-copy"}]
    assert all(m.exact and m.score == 1.0 for m in reply.groups[0].members)
    assert (reply.next_cursor, reply.scanned) == (None, 11)


async def test_near_duplicates_come_in_one_group_each(store: VectorStore) -> None:
    reply = await duplicates(store, threshold=0.95)

    # Three copies of the cat make one group (not also the pair of its later two).
    assert sorted(map(sorted, grouped(reply))) == [
        ["cat-a", "cat-copy", "cat-resized"],
        ["dog", "dog-near"],
    ]
    cat = next(g for g in reply.groups if "cat-resized" in grouped_ids(g))
    by_id = {m.image_id: m for m in cat.members}
    assert "cat-resized" not in by_id or not by_id["cat-resized"].exact
    assert all(0.95 <= m.score <= 1.0 for g in reply.groups for m in g.members)


def grouped_ids(group: Any) -> set[str]:
    return {group.image_id, *(m.image_id for m in group.members)}


async def test_pages_follow_the_cursor_to_the_same_groups(store: VectorStore) -> None:
    whole = await duplicates(store, threshold=0.95)
    pages: list[set[str]] = []
    cursor: str | None = None
    for _ in range(10):
        page = await duplicates(store, threshold=0.95, limit=1, cursor=cursor)
        assert len(page.groups) <= 1
        pages += grouped(page)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert cursor is None
    assert sorted(map(sorted, pages)) == sorted(map(sorted, grouped(whole)))


async def test_duplicates_within_a_filter(store: VectorStore) -> None:
    reply = await duplicates(store, threshold=0.95, filter={"kind": "dog"})

    assert grouped(reply) == [{"dog", "dog-near"}]
    assert reply.scanned == 2


async def test_a_group_over_max_group_is_truncated(store: VectorStore) -> None:
    reply = await duplicates(store, threshold=0.95, max_group=1, filter={"kind": "cat"})

    assert reply.groups[0].truncated
    assert len(reply.groups[0].members) == 1


async def test_the_images_with_given_bytes(store: VectorStore) -> None:
    reply = await duplicates(store, content_sha256=sha("cat bytes"))
    assert grouped(reply) == [{"cat-a", "cat-copy"}]

    none = await duplicates(store, content_sha256=sha("never uploaded"))
    assert none.groups == []


def test_combine_is_qdrants_average_vector() -> None:
    a, b, c = unit_vector(1), unit_vector(2), unit_vector(3)

    only_positive = combine([(a, 1.0), (b, 3.0)], [])
    mean = (a + 3 * b) / 4
    np.testing.assert_allclose(only_positive, mean / np.linalg.norm(mean), atol=1e-6)

    with_negative = combine([(a, 1.0)], [(c, 2.0)])
    away = 2 * a - c
    np.testing.assert_allclose(with_negative, away / np.linalg.norm(away), atol=1e-6)
    assert float(np.linalg.norm(with_negative)) == pytest.approx(1.0)


def test_examples_that_cancel_out_are_a_bad_request() -> None:
    a = unit_vector(1)
    with pytest.raises(RequestError, match="cancel out"):
        combine([(a, 1.0)], [(2 * a, 1.0)])  # P + (P − N) = 0


@pytest.fixture
async def broker(store: VectorStore) -> AsyncIterator[KafkaBroker]:
    broker = KafkaBroker()
    settings = IndexerSettings(dim=DIM, model=MODEL)
    broker.include_router(build_router(settings, IndexerState(Collections(store, settings))))
    async with TestKafkaBroker(broker) as test_broker:
        yield test_broker


async def ask_search(broker: KafkaBroker, **fields: Any) -> SearchReplied:
    request = VectorSearchRequested.model_validate(
        {"deadline_ms": now_ms() + 5_000, "top_k": 3, **fields}
    )
    response = await broker.request(request, TOPICS.searches, timeout=5)
    return SearchReplied.model_validate_json(response.body)


async def test_search_by_an_id_and_a_vector_leaves_the_named_image_out(
    broker: KafkaBroker,
) -> None:
    reply = await ask_search(
        broker,
        positive=[{"image_id": "cat-a"}, {"vector": pack_vector(unit_vector(1)), "weight": 2}],
        top_k=2,
    )

    assert reply.error is None
    assert [h.image_id for h in reply.hits][:1] == ["cat-copy"]
    assert "cat-a" not in {h.image_id for h in reply.hits}


async def test_a_negative_example_pushes_its_kind_down(broker: KafkaBroker) -> None:
    # Halfway between the cat and the dog; the negative dog decides which comes first.
    middle = pack_vector((unit_vector(1) + unit_vector(2)).astype(np.float32))
    plain = await ask_search(broker, positive=[{"vector": middle}], top_k=11)
    away_from_dogs = await ask_search(
        broker, positive=[{"vector": middle}], negative=[{"image_id": "dog"}], top_k=11
    )

    rank = [h.image_id for h in away_from_dogs.hits]
    assert rank[0].startswith("cat")
    assert "dog" not in rank  # named, so left out
    assert rank.index("dog-near") > max(rank.index(i) for i in ("cat-a", "cat-resized"))
    assert {h.image_id for h in plain.hits} > set(rank)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        pytest.param({"positive": [{"image_id": "missing"}]}, "not_found", id="unknown-id"),
        pytest.param({"positive": [{"text": "a cat"}]}, "bad_request", id="text-not-embedded"),
        pytest.param({"negative": [{"image_id": "dog"}]}, "bad_request", id="negative-only"),
        pytest.param(
            {"positive": [{"image_id": "dog"}], "vector": pack_vector(unit_vector(1))},
            "bad_request",
            id="examples-and-a-vector",
        ),
        pytest.param({"positive": [{"vector": SHORT}]}, "wrong_dim", id="dim"),
    ],
)
async def test_bad_examples_get_error_replies(
    broker: KafkaBroker, fields: dict[str, Any], code: str
) -> None:
    reply = await ask_search(broker, **fields)

    assert reply.error_code == code


async def test_vectors_come_with_hits_and_lookups_when_asked(broker: KafkaBroker) -> None:
    reply = await ask_search(broker, like_image_id="dog", top_k=1, include_vectors=True)
    assert reply.hits[0].image_id == "dog-near"
    np.testing.assert_allclose(unpack_vector(reply.hits[0].vector or ""), near(2, 51), atol=1e-6)
    plain = await ask_search(broker, like_image_id="dog", top_k=1)
    assert plain.hits[0].vector is None

    request = LookupRequested(image_id="dog", include_vector=True, deadline_ms=now_ms() + 5_000)
    response = await broker.request(request, TOPICS.lookups, timeout=5)
    record = ImageRecord.model_validate_json(response.body)
    np.testing.assert_allclose(unpack_vector(record.vector or ""), unit_vector(2), atol=1e-6)
    assert record.content_sha256 == sha("dog bytes")


async def test_duplicates_over_the_responder(broker: KafkaBroker) -> None:
    request = DuplicatesRequested(threshold=0.95, deadline_ms=now_ms() + 5_000)
    response = await broker.request(request, TOPICS.duplicates, timeout=5)
    reply = DuplicatesReplied.model_validate_json(response.body)
    assert len(reply.groups) == 2

    bad = await broker.request(b'{"deadline_ms": 1, "limit": 0}', TOPICS.duplicates, timeout=5)
    assert DuplicatesReplied.model_validate_json(bad.body).error_code == "bad_request"

    impossible = DuplicatesRequested(filter={"n": 2**70}, deadline_ms=now_ms() + 5_000)
    response = await broker.request(impossible, TOPICS.duplicates, timeout=5)
    assert DuplicatesReplied.model_validate_json(response.body).error_code == "bad_request"


async def test_a_cursor_that_is_no_point_id_is_refused(broker: KafkaBroker) -> None:
    body = b'{"deadline_ms": 99999999999999, "cursor": "not-a-point"}'
    response = await broker.request(body, TOPICS.duplicates, timeout=5)
    assert DuplicatesReplied.model_validate_json(response.body).error_code == "bad_request"
