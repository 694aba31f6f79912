"""The router under FastStream's TestKafkaBroker (in memory), with the fake encoder.

Proves the wiring: a query is forwarded to the searches topic with the incoming
correlation_id and reply_to, bad input is answered on reply_to, late queries are dropped,
and an image batch is produced through the service's producer.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaProducer
from embedder_fakes import FakeEncoder
from faststream.kafka import KafkaBroker, TestKafkaBroker
from PIL import Image

from imgsim_core.contracts import (
    ImageEmbedded,
    Range,
    SearchReplied,
    SearchRequested,
    VectorSearchRequested,
    unpack_vector,
)
from imgsim_core.kafka import now_ms
from imgsim_core.responders import Received, received
from imgsim_core.topics import Header
from imgsim_devstack.routers import consumer_args
from imgsim_devstack.threadhops import worker_thread_calls
from imgsim_embedder.batcher import MicroBatcher
from imgsim_embedder.handlers import EmbedderState, StateHolder, build_router
from imgsim_embedder.preprocessing import PreprocessPool
from imgsim_embedder.settings import EmbedderSettings

SETTINGS = EmbedderSettings()
TOPICS = SETTINGS.kafka.topics


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []

    async def send(self, topic: str, value: bytes | None, **kw: Any) -> asyncio.Future[None]:
        self.sent.append((topic, kw.get("key"), value))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


class Harness:
    def __init__(self, broker: KafkaBroker, producer: FakeProducer) -> None:
        self.broker = broker
        self.producer = producer
        self.searches: list[tuple[VectorSearchRequested, str | None, str]] = []
        self.replies: list[tuple[SearchReplied, str | None]] = []


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    encoder = FakeEncoder()
    batcher = MicroBatcher(encoder, max_batch=8, max_wait_ms=1)
    batcher.start()
    producer = FakeProducer()
    holder = StateHolder()
    pool = PreprocessPool(1)
    holder.set(EmbedderState(encoder, batcher, pool, cast(AIOKafkaProducer, producer)))
    broker = KafkaBroker()
    broker.include_router(build_router(SETTINGS, holder, broker))
    h = Harness(broker, producer)

    @broker.subscriber(TOPICS.searches, no_reply=True, decoder=received)  # the indexer's place
    async def searches(message: Received) -> None:
        body = VectorSearchRequested.model_validate_json(message.body)
        h.searches.append((body, message.correlation_id, message.reply_to))

    @broker.subscriber("replies.test", decoder=received)
    async def replies(message: Received) -> None:
        h.replies.append((SearchReplied.model_validate_json(message.body), message.correlation_id))

    async with TestKafkaBroker(broker):
        yield h
    await batcher.stop()
    pool.shutdown()


def png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (50, 60, 70)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def ask(h: Harness, query: SearchRequested) -> None:
    await h.broker.publish(query, TOPICS.queries, correlation_id="cid-1", reply_to="replies.test")


async def test_a_query_goes_to_searches_with_its_reply_address(harness: Harness) -> None:
    await ask(harness, SearchRequested(image=png(), top_k=5, deadline_ms=now_ms() + 5000))
    [(search, cid, reply_to)] = harness.searches
    assert (cid, reply_to) == ("cid-1", "replies.test")
    assert (search.top_k, search.model_id) == (5, "fake/test")
    assert harness.replies == []


async def test_queries_are_taken_without_a_thread_hop(harness: Harness) -> None:
    """The query handler takes its message from its decoder, not from FastStream's
    ``Context`` (a worker-thread hop per parameter per message)."""
    with worker_thread_calls() as hops:
        await ask(harness, SearchRequested(image=png(), deadline_ms=now_ms() + 5000))
        await ask(harness, SearchRequested(image="@@@", deadline_ms=now_ms() + 5000))

    assert (len(harness.searches), len(harness.replies)) == (1, 1)
    assert hops == []


async def test_a_bad_query_is_answered_with_an_error(harness: Harness) -> None:
    await ask(harness, SearchRequested(image="@@@", deadline_ms=now_ms() + 5000))
    [(reply, cid)] = harness.replies
    assert (reply.error_code, cid) == ("bad_base64", "cid-1")
    assert harness.searches == []


async def test_a_late_query_is_dropped(harness: Harness) -> None:
    await ask(harness, SearchRequested(text="late", deadline_ms=now_ms() - 1))
    assert harness.searches == []
    assert harness.replies == []


async def test_a_request_past_its_deadline_header_is_dropped_unparsed(harness: Harness) -> None:
    """Not even a malformed body is answered: the header decides before parsing."""
    await harness.broker.publish(
        b"{not json", TOPICS.queries, correlation_id="cid-2", reply_to="replies.test",
        headers={Header.DEADLINE: str(now_ms() - 1)},
    )  # fmt: skip
    await harness.broker.publish(
        b"{not json", TOPICS.queries, correlation_id="cid-3", reply_to="replies.test",
        headers={Header.DEADLINE: str(now_ms() + 5000)},
    )  # fmt: skip
    assert [(r.error_code, cid) for r, cid in harness.replies] == [("bad_request", "cid-3")]


async def test_an_image_record_is_produced_as_a_vector(harness: Harness) -> None:
    data = base64.b64decode(png())
    await harness.broker.publish(
        data, TOPICS.images, key=b"img-9", headers={Header.METADATA: '{"a":1}'}
    )
    [(topic, key, value)] = harness.producer.sent
    assert (topic, key) == (TOPICS.vectors, b"img-9")
    event = ImageEmbedded.model_validate_json(value or b"")
    assert (event.image_id, event.metadata) == ("img-9", {"a": 1})


MALFORMED: list[tuple[str, bytes | str | dict[str, Any], dict[str, str]]] = [
    ("not JSON", b"{this is not json", {"content-type": "application/json"}),
    ("not UTF-8", b"\xff\xfe\x00", {}),
    ("plain text", "find me a cat", {}),
    ("a JSON list", b"[1, 2]", {"content-type": "application/json"}),
    ("no deadline", {"text": "cat"}, {}),
    ("wrong types", {"text": "cat", "top_k": "many", "deadline_ms": 1}, {}),
    ("unknown field", {"text": "cat", "colour": "red", "deadline_ms": 1}, {}),
    ("top_k out of range", {"text": "cat", "top_k": 0, "deadline_ms": 1}, {}),
    ("bad filter key", {"text": "cat", "filter": {"a b": 1}, "deadline_ms": 1}, {}),
    ("neither", {"top_k": 3}, {}),
    ("both", {"text": "cat", "image": png()}, {}),
    ("empty text", {"text": ""}, {}),
    ("blank text", {"text": "   "}, {}),
    ("text over 1000", {"text": "x" * 1001}, {}),
]


@pytest.mark.parametrize(("name", "body", "headers"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_a_malformed_query_gets_a_bad_request_reply(
    harness: Harness, name: str, body: bytes | str | dict[str, Any], headers: dict[str, str]
) -> None:
    if isinstance(body, dict) and name != "no deadline":
        body = {"deadline_ms": now_ms() + 5000, **body}
    await harness.broker.publish(
        body, TOPICS.queries, correlation_id="cid-7", reply_to="replies.test", headers=headers
    )
    [(reply, cid)] = harness.replies
    assert (reply.error_code, cid) == ("bad_request", "cid-7")
    assert reply.error
    assert reply.hits == []
    assert harness.searches == []


async def test_a_text_query_is_forwarded_with_its_filter(harness: Harness) -> None:
    raw = {
        "text": "a red car",
        "top_k": 4,
        "threshold": 0.1,
        "include_metadata": False,
        "filter": {"tags": "car", "year": {"lt": 2000}},
        "deadline_ms": now_ms() + 5000,
    }
    await harness.broker.publish(
        raw, TOPICS.queries, correlation_id="cid-2", reply_to="replies.test"
    )
    [(search, cid, reply_to)] = harness.searches
    assert (cid, reply_to) == ("cid-2", "replies.test")
    assert (search.top_k, search.threshold, search.include_metadata) == (4, 0.1, False)
    assert search.filter == {"tags": "car", "year": Range(lt=2000)}
    assert search.vector is not None
    assert unpack_vector(search.vector).tolist() == [9.0, 1.0, 0.0, 0.0]
    assert harness.replies == []


def test_the_queries_consumer_waits_as_the_latency_paths_and_the_images_one_as_bulk() -> None:
    settings = EmbedderSettings.model_validate(
        {"kafka": {"latency_fetch_max_wait_ms": 111, "bulk_fetch_max_wait_ms": 222}}
    )
    router = build_router(settings, StateHolder(), KafkaBroker())
    waits = {topic: args["fetch_max_wait_ms"] for (topic, _), args in consumer_args(router).items()}
    topics = settings.kafka.topics
    assert waits == {topics.queries: 111, topics.images: 222}
