"""The indexer's search responder on a real broker: a request past its deadline gets no
reply at all (it is acknowledged and dropped), and the requests after it are answered."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer
from faststream.kafka import KafkaBroker

from imgsim_core.contracts import SearchReplied, VectorSearchRequested, pack_vector
from imgsim_core.kafka import ensure_topics, make_producer, now_ms
from imgsim_core.settings import KafkaSettings, ModelSettings, QdrantSettings
from imgsim_core.topics import Header
from imgsim_indexer.edge_store import EdgeStore
from imgsim_indexer.handlers import IndexerState, build_router
from imgsim_indexer.serving import Collections
from imgsim_indexer.settings import IndexerSettings
from tests.conftest import Services

pytestmark = pytest.mark.integration

DIM = 16


def request(deadline_ms: int) -> bytes:
    vector = np.ones(DIM, dtype=np.float32) / np.sqrt(DIM)
    return (
        VectorSearchRequested(
            vector=pack_vector(vector),
            model_id=ModelSettings(weights="random").model_id,
            deadline_ms=deadline_ms,
            top_k=3,
        )
        .model_dump_json()
        .encode()
    )


async def test_a_search_past_its_deadline_gets_no_reply(
    infra: Services, topic_prefix: str, tmp_path: Path
) -> None:
    # One partition: the requests are handled in the order they were sent, so once the
    # live one is answered, both expired ones before it have been handled too.
    kafka = KafkaSettings(
        bootstrap_servers=infra.bootstrap, topic_prefix=topic_prefix, partitions=1
    )
    reply_to = f"{topic_prefix}replies.test"
    await ensure_topics(kafka, extra=[reply_to])
    settings = IndexerSettings(
        dim=DIM,
        model=ModelSettings(weights="random"),
        kafka=kafka,
        qdrant=QdrantSettings(path=tmp_path),
    )
    store = EdgeStore(settings.qdrant, DIM)
    await store.open()
    broker = KafkaBroker(infra.bootstrap)
    broker.include_router(build_router(settings, IndexerState(Collections(store, settings))))
    replies = AIOKafkaConsumer(
        reply_to, bootstrap_servers=infra.bootstrap, auto_offset_reset="earliest", group_id=None
    )
    producer = make_producer(kafka, linger_ms=0)
    await broker.start()
    await replies.start()
    await producer.start()
    try:
        late = now_ms() - 1_000
        sent = {
            "expired by header": (request(now_ms() + 60_000), str(late)),
            "expired by body": (request(late), None),
            "live": (request(now_ms() + 60_000), str(now_ms() + 60_000)),
        }
        ids = {}
        for name, (body, deadline) in sent.items():
            ids[name] = uuid.uuid4().hex
            headers = [
                (Header.CORRELATION_ID, ids[name].encode()),
                (Header.REPLY_TO, reply_to.encode()),
            ]
            if deadline is not None:
                headers.append((Header.DEADLINE, deadline.encode()))
            await producer.send_and_wait(kafka.topics.searches, body, headers=headers)

        answered = []
        async with asyncio.timeout(30):
            while ids["live"] not in answered:
                record = await replies.getone()
                answered.append(dict(record.headers)[Header.CORRELATION_ID].decode())
                assert SearchReplied.model_validate_json(record.value).error_code is None
        # Anything the expired requests had produced would sit before the live reply.
        more = await replies.getmany(timeout_ms=500)
        answered += [
            dict(r.headers)[Header.CORRELATION_ID].decode() for rs in more.values() for r in rs
        ]
        assert answered == [ids["live"]]
    finally:
        await producer.stop()
        await replies.stop()
        await broker.stop()
        await store.close()
