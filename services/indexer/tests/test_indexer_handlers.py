"""The router under FastStream's TestKafkaBroker, with a real Edge store in tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker
from indexer_samples import DIM, MODEL, make_point, unit_vector

from imgsim_core.contracts import (
    ImageEmbedded,
    IndexerStatus,
    SearchReplied,
    StatusRequested,
    VectorSearchRequested,
    pack_vector,
)
from imgsim_core.kafka import now_ms
from imgsim_core.settings import QdrantSettings
from imgsim_devstack.routers import consumer_args
from imgsim_devstack.threadhops import worker_thread_calls
from imgsim_indexer.edge_store import EdgeStore
from imgsim_indexer.handlers import IndexerState, build_router
from imgsim_indexer.serving import Collections
from imgsim_indexer.settings import IndexerSettings

SETTINGS = IndexerSettings(dim=DIM, model=MODEL)
TOPICS = SETTINGS.kafka.topics


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[IndexerState]:
    store = EdgeStore(QdrantSettings(path=tmp_path), DIM)
    await store.open()
    await store.upsert([make_point(f"img-{i}", i) for i in range(10)])
    yield IndexerState(Collections(store, SETTINGS))
    await store.close()


@pytest.fixture
async def broker(state: IndexerState) -> AsyncIterator[KafkaBroker]:
    broker = KafkaBroker()
    broker.include_router(build_router(SETTINGS, state))
    async with TestKafkaBroker(broker) as test_broker:
        yield test_broker


def search_request(seed: int, **changes: object) -> VectorSearchRequested:
    fields: dict[str, object] = {
        "vector": pack_vector(unit_vector(seed)),
        "model_id": MODEL.model_id,
        "deadline_ms": now_ms() + 5_000,
        "top_k": 3,
    }
    fields.update(changes)
    return VectorSearchRequested.model_validate(fields)


async def test_search_replies_with_hits(broker: KafkaBroker) -> None:
    response = await broker.request(search_request(4), TOPICS.searches, timeout=5)

    reply = SearchReplied.model_validate_json(response.body)
    assert reply.error is None
    assert [h.image_id for h in reply.hits][:1] == ["img-4"]
    assert len(reply.hits) == 3
    assert reply.hits[0].metadata == {"seed": 4}


async def test_responders_take_their_message_without_a_thread_hop(broker: KafkaBroker) -> None:
    """The responders take their message from their decoder, not from FastStream's
    ``Context`` (a worker-thread hop per parameter per message)."""
    with worker_thread_calls() as hops:
        await broker.request(search_request(4), TOPICS.searches, timeout=5)
        status = StatusRequested(deadline_ms=now_ms() + 5_000)
        response = await broker.request(status, TOPICS.status, timeout=5)

    assert IndexerStatus.model_validate_json(response.body).indexed == 10
    assert hops == []


async def test_search_with_wrong_dim_replies_an_error(broker: KafkaBroker) -> None:
    request = search_request(1, vector=pack_vector(unit_vector(1, dim=DIM + 1)))

    response = await broker.request(request, TOPICS.searches, timeout=5)

    reply = SearchReplied.model_validate_json(response.body)
    assert (reply.error_code, reply.hits) == ("wrong_dim", [])


async def test_search_store_error_replies_store_error(
    broker: KafkaBroker, state: IndexerState
) -> None:
    await state.collections.live.close()

    response = await broker.request(search_request(1), TOPICS.searches, timeout=5)

    assert SearchReplied.model_validate_json(response.body).error_code == "store_error"


async def test_status_reports_the_store(broker: KafkaBroker, state: IndexerState) -> None:
    response = await broker.request(
        StatusRequested(deadline_ms=now_ms() + 5_000), TOPICS.status, timeout=5
    )

    status = IndexerStatus.model_validate_json(response.body)
    assert status == IndexerStatus(
        ready=True,
        store="qdrant-edge",
        collection="images",
        indexed=10,
        model_id=MODEL.model_id,
        started_at=state.started_at,
    )


async def test_vectors_batch_upserts(broker: KafkaBroker, state: IndexerState) -> None:
    event = ImageEmbedded(
        image_id="new",
        model_id=MODEL.model_id,
        dim=DIM,
        vector=pack_vector(unit_vector(99)),
        metadata={"k": "v"},
        embedded_at=make_point("x", 0).indexed_at,
    )

    await broker.publish(event.model_dump_json().encode(), TOPICS.vectors, key=b"new")

    stored = await state.collections.live.get("new")
    assert stored is not None
    assert stored.metadata == {"k": "v"}
    assert await state.collections.live.count() == 11


def test_responders_take_the_latency_fetch_wait_and_the_vectors_consumer_the_bulk_one(
    state: IndexerState,
) -> None:
    settings = IndexerSettings.model_validate(
        {"dim": DIM, "model": MODEL,
         "kafka": {"latency_fetch_max_wait_ms": 5555, "bulk_fetch_max_wait_ms": 222}}
    )  # fmt: skip
    consumers = consumer_args(build_router(settings, state))
    waits = {topic: args["fetch_max_wait_ms"] for (topic, _), args in consumers.items()}
    topics = settings.kafka.topics
    assert waits.pop(topics.vectors) == 222
    assert {topics.searches, topics.lookups} <= waits.keys()
    assert set(waits.values()) == {5555}
