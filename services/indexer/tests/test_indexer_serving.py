"""The collections object: one pass writes every model's collection; a switch waits for
the live writes and hands over the live role; dropped models are skipped."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from aiokafka import ConsumerRecord, TopicPartition
from indexer_samples import DIM, edge_settings, unit_vector

from imgsim_core.contracts import ImageEmbedded, pack_vector
from imgsim_core.settings import ModelSettings
from imgsim_indexer.edge_store import EdgeStore
from imgsim_indexer.serving import Collections
from imgsim_indexer.settings import IndexerSettings

SETTINGS = IndexerSettings(dim=DIM, model=ModelSettings(weights="random"))
OLD, NEW = SETTINGS.model.model_id, "new-model"
VECTORS = SETTINGS.kafka.topics.vectors


def record(offset: int, image_id: str, model_id: str | None) -> ConsumerRecord[bytes, bytes]:
    value = None
    if model_id is not None:
        value = ImageEmbedded(
            image_id=image_id, model_id=model_id, dim=DIM, vector=pack_vector(unit_vector(offset)),
            metadata={}, embedded_at=datetime.now(UTC),
        ).model_dump_json().encode()  # fmt: skip
    return ConsumerRecord(
        topic=VECTORS, partition=0, offset=offset, timestamp=0, timestamp_type=0,
        key=image_id.encode(), value=value, checksum=None, serialized_key_size=0,
        serialized_value_size=0, headers=(),
    )  # fmt: skip


async def test_a_model_change_switches_keeps_and_then_drops_the_old_collection(
    tmp_path: Path,
) -> None:
    live = EdgeStore(edge_settings(tmp_path), DIM)
    target = EdgeStore(edge_settings(tmp_path), DIM, physical="images_v2")
    await live.open()
    await target.open()
    collections = Collections(live, SETTINGS)
    collections.expect(NEW)

    plan = await collections.apply([record(0, "a", OLD), record(1, "b", NEW)])
    assert ([p.image_id for p in plan.upserts], plan.skipped, plan.dead_letters) == (["a"], 1, [])
    await target.upsert([*plan.upserts])  # stands in for the replay

    # The replay has read up to offset 1 only: the live writes reached 2, so no switch.
    assert await collections.switch(target, NEW, {TopicPartition(VECTORS, 0): 1}) is None
    assert collections.live is live
    assert await live.aliased() == "images_v1"

    old = await collections.switch(target, NEW, {TopicPartition(VECTORS, 0): 2})
    assert old is live
    assert collections.live is target
    assert collections.model_id == NEW
    assert await live.aliased() == "images_v2"
    assert collections.for_model(NEW) is target
    assert collections.for_model(None) is target
    assert collections.for_model(OLD) is live
    assert collections.for_model("other") is None

    # One batch now reaches both: each model's vectors to its own collection, deletes to all.
    plan = await collections.apply([record(2, "c", OLD), record(3, "d", NEW), record(4, "a", None)])
    assert [p.image_id for p in plan.upserts] == ["d"]
    assert await live.get("c") is not None
    assert await live.get("d") is None
    assert await target.get("d") is not None
    assert await target.get("c") is None
    assert await live.get("a") is None
    assert await target.get("a") is None

    await collections.close_older()
    assert collections.for_model(OLD) is None
    plan = await collections.apply([record(5, "e", OLD)])
    assert (plan.skipped, plan.dead_letters) == (1, [])  # an old embedder still producing
    await target.close()
