"""Searches by id, filters, lookups and malformed requests, under TestKafkaBroker."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker
from indexer_samples import DIM, MODEL, make_point, unit_vector
from prometheus_client import REGISTRY

from imgsim_core.contracts import (
    ImageEmbedded,
    ImageRecord,
    IndexerStatus,
    LookupRequested,
    SearchReplied,
    VectorSearchRequested,
    pack_vector,
)
from imgsim_core.kafka import now_ms
from imgsim_core.settings import QdrantSettings
from imgsim_indexer.edge_store import EdgeStore
from imgsim_indexer.handlers import IndexerState, build_router
from imgsim_indexer.payload import Point
from imgsim_indexer.serving import Collections
from imgsim_indexer.settings import IndexerSettings

SETTINGS = IndexerSettings(dim=DIM, model=MODEL)
TOPICS = SETTINGS.kafka.topics


class AckedProducer:
    """Stands in for aiokafka's producer: records what was sent, acknowledges at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, dict[str, bytes]]] = []

    async def send(
        self, topic: str, value: bytes | None, *, key: bytes | None, headers: Sequence[Any]
    ) -> asyncio.Future[None]:
        self.sent.append((topic, value, dict(headers)))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def located(image_id: str, seed: int, partition: int, offset: int) -> Point:
    point = make_point(image_id, seed, {"tags": ["odd" if seed % 2 else "even"]})
    return dataclasses.replace(point, source_partition=partition, source_offset=offset)


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[IndexerState]:
    store = EdgeStore(QdrantSettings(path=tmp_path), DIM, payload_indexes={"tags": "keyword"})
    await store.open()
    await store.upsert([located(f"img-{i}", i, partition=i % 3, offset=100 + i) for i in range(10)])
    yield IndexerState(Collections(store, SETTINGS), deadletter_producer=AckedProducer())
    await store.close()


@pytest.fixture
async def broker(state: IndexerState) -> AsyncIterator[KafkaBroker]:
    broker = KafkaBroker()
    broker.include_router(build_router(SETTINGS, state))
    async with TestKafkaBroker(broker) as test_broker:
        yield test_broker


async def ask_search(broker: KafkaBroker, **fields: Any) -> SearchReplied:
    request = VectorSearchRequested.model_validate(
        {"deadline_ms": now_ms() + 5_000, "top_k": 3, **fields}
    )
    response = await broker.request(request, TOPICS.searches, timeout=5)
    return SearchReplied.model_validate_json(response.body)


async def test_search_echoes_the_query_vector(broker: KafkaBroker) -> None:
    vector = pack_vector(unit_vector(4))

    reply = await ask_search(broker, vector=vector, model_id=MODEL.model_id)

    assert reply.hits[0].image_id == "img-4"
    assert (reply.query_vector, reply.model_id) == (vector, MODEL.model_id)


async def test_search_with_a_filter(broker: KafkaBroker) -> None:
    reply = await ask_search(
        broker, vector=pack_vector(unit_vector(4)), top_k=10, filter={"tags": "odd"}
    )

    assert reply.error is None
    assert {h.image_id for h in reply.hits} == {f"img-{i}" for i in range(1, 10, 2)}


async def test_search_with_an_impossible_filter_value_is_a_bad_request(
    broker: KafkaBroker,
) -> None:
    reply = await ask_search(broker, vector=pack_vector(unit_vector(4)), filter={"n": 2**70})

    assert reply.error_code == "bad_request"


async def test_search_like_an_image_leaves_it_out(broker: KafkaBroker) -> None:
    reply = await ask_search(broker, like_image_id="img-4", top_k=9)

    assert reply.error is None
    assert {h.image_id for h in reply.hits} == {f"img-{i}" for i in range(10)} - {"img-4"}
    assert reply.query_vector is None


async def test_search_like_an_unknown_image_is_not_found(broker: KafkaBroker) -> None:
    reply = await ask_search(broker, like_image_id="nope")

    assert (reply.error, reply.error_code) == ("image nope is not indexed", "not_found")


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({}, id="neither"),
        pytest.param({"vector": pack_vector(unit_vector(1)), "like_image_id": "img-1"}, id="both"),
    ],
)
async def test_search_needs_one_query(broker: KafkaBroker, fields: dict[str, Any]) -> None:
    reply = await ask_search(broker, **fields)

    assert reply.error_code == "bad_request"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b'{"vector": "AAAA"}', id="no-deadline"),
        pytest.param(b'{"deadline_ms": 1, "top_k": 0, "vector": "AAAA"}', id="bad-top-k"),
        pytest.param(b'{"deadline_ms": 1, "filter": {"a.b": 1}}', id="bad-filter-key"),
    ],
)
async def test_malformed_search_gets_a_bad_request_reply(broker: KafkaBroker, body: bytes) -> None:
    response = await broker.request(body, TOPICS.searches, timeout=5)

    reply = SearchReplied.model_validate_json(response.body)
    assert reply.error_code == "bad_request"
    assert reply.error is not None
    assert reply.error.startswith("invalid request")


async def test_lookup_found_with_its_source_offset(broker: KafkaBroker) -> None:
    request = LookupRequested(image_id="img-5", deadline_ms=now_ms() + 5_000)

    response = await broker.request(request, TOPICS.lookups, timeout=5)

    record = ImageRecord.model_validate_json(response.body)
    assert record.found
    assert record.image_id == "img-5"
    assert record.model_id == "test-model"
    assert record.metadata == {"tags": ["odd"]}
    assert (record.source_partition, record.source_offset) == (2, 105)
    assert record.indexed_at == make_point("x", 0).indexed_at
    assert record.error is None


async def test_lookup_not_found(broker: KafkaBroker) -> None:
    request = LookupRequested(image_id="nope", deadline_ms=now_ms() + 5_000)

    response = await broker.request(request, TOPICS.lookups, timeout=5)

    assert ImageRecord.model_validate_json(response.body) == ImageRecord(
        image_id="nope", found=False
    )


async def test_malformed_lookup_and_status_get_error_replies(broker: KafkaBroker) -> None:
    lookup = ImageRecord.model_validate_json(
        (await broker.request(b"[]", TOPICS.lookups, timeout=5)).body
    )
    status = IndexerStatus.model_validate_json(
        (await broker.request(b"{", TOPICS.status, timeout=5)).body
    )

    assert not lookup.found
    assert lookup.error is not None
    assert lookup.error.startswith("bad_request: ")
    assert status.error is not None
    assert status.error.startswith("bad_request: ")
    assert (status.ready, status.indexed) == (True, 10)


def deadletters(reason: str) -> float:
    value = REGISTRY.get_sample_value("imgsim_indexer_deadletters_total", {"reason": reason})
    return value or 0.0


async def test_vectors_of_another_model_become_counted_dead_letters(
    broker: KafkaBroker, state: IndexerState
) -> None:
    before = deadletters("unknown_model")
    event = ImageEmbedded(
        image_id="alien",
        model_id="some-other-model",
        dim=DIM,
        vector=pack_vector(unit_vector(99)),
        embedded_at=make_point("x", 0).indexed_at,
    )

    await broker.publish(event.model_dump_json().encode(), TOPICS.vectors, key=b"alien")

    assert await state.collections.live.get("alien") is None
    assert deadletters("unknown_model") == before + 1
    producer = state.deadletter_producer
    assert isinstance(producer, AckedProducer)
    [(topic, _, headers)] = producer.sent
    assert topic == TOPICS.deadletter
    assert headers["reason"].decode().startswith("unknown_model: ")
