"""Bounded redelivery: a batch the model fails on is retried, then dead-lettered image by image."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from embedder_fakes import FakeEncoder
from PIL import Image
from prometheus_client import REGISTRY

from imgsim_core.contracts import ImageEmbedded
from imgsim_core.kafka import OutRecord
from imgsim_core.settings import ImageLimits
from imgsim_core.topics import Header, Topics
from imgsim_embedder.batcher import MicroBatcher
from imgsim_embedder.embedding import embed_records
from imgsim_embedder.errors import BatcherClosedError
from imgsim_embedder.preprocessing import PreprocessPool
from imgsim_embedder.settings import EmbedderSettings

TOPICS = Topics("t.")
LIMITS = ImageLimits()


def png(red: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (red, 10, 20)).save(buf, format="PNG")
    return buf.getvalue()


def record(offset: int, key: bytes, value: bytes | None) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(TOPICS.images, 1, offset, 0, 0, key, value, None, 0, 0, [])


@pytest.fixture
def pool() -> Iterator[PreprocessPool]:
    with PreprocessPool(2) as p:
        yield p


@pytest.fixture
def fake() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture
async def batcher(fake: FakeEncoder) -> AsyncIterator[MicroBatcher]:
    b = MicroBatcher(fake, max_batch=8, max_wait_ms=0)
    b.start()
    yield b
    await b.stop()


async def run(
    records: list[ConsumerRecord[Any, Any]],
    batcher: MicroBatcher,
    pool: PreprocessPool,
    retries: int = 3,
) -> list[OutRecord]:
    return await embed_records(
        records,
        encoder=batcher.encoder,
        batcher=batcher,
        pool=pool,
        topics=TOPICS,
        limits=LIMITS,
        model_retries=retries,
        retry_backoff_s=0.001,
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def reason(out: OutRecord) -> str:
    return dict(out.headers)[Header.REASON].decode()


def test_the_retry_settings_have_bounded_defaults() -> None:
    settings = EmbedderSettings()
    assert settings.model_retries == 3
    assert 0 < settings.model_retry_backoff_ms <= 1000


async def test_a_transient_model_failure_is_retried(
    batcher: MicroBatcher,
    fake: FakeEncoder,
    pool: PreprocessPool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.failures = 2
    with caplog.at_level(logging.WARNING, logger="imgsim_embedder.handlers"):
        outs = await run([record(0, b"a", png(5)), record(1, b"b", png(6))], batcher, pool)
    assert [o.topic for o in outs] == [TOPICS.vectors] * 2
    assert fake.calls == [("image", 2)] * 3
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 2


async def test_a_persistent_failure_dead_letters_the_images_and_moves_on(
    batcher: MicroBatcher, fake: FakeEncoder, pool: PreprocessPool
) -> None:
    fake.failures = 1000
    dead_before = metric("imgsim_embedder_deadletters_total", reason="model_error")
    records = [record(0, b"a", png(5)), record(1, b"gone", None), record(2, b"b", png(6))]
    outs = await run(records, batcher, pool, retries=2)
    assert [(o.topic, o.key) for o in outs] == [
        (TOPICS.deadletter, b"a"),
        (TOPICS.vectors, b"gone"),  # tombstones never need the model
        (TOPICS.deadletter, b"b"),
    ]
    assert reason(outs[0]) == "model_error: RuntimeError: fake transient failure"
    assert outs[2].value == png(6)  # the dead letter keeps the original bytes
    # 3 tries of the batch, then each image once alone: bounded
    assert fake.calls == [("image", 2)] * 3 + [("image", 1)] * 2
    assert metric("imgsim_embedder_deadletters_total", reason="model_error") == dead_before + 2


async def test_an_image_that_breaks_the_model_does_not_take_the_batch_down(
    batcher: MicroBatcher, fake: FakeEncoder, pool: PreprocessPool
) -> None:
    fake.poison = {66}
    embedded_before = metric("imgsim_embedder_images_total")
    records = [record(0, b"a", png(5)), record(1, b"bad", png(66)), record(2, b"c", png(7))]
    outs = await run(records, batcher, pool, retries=1)
    assert [o.topic for o in outs] == [TOPICS.vectors, TOPICS.deadletter, TOPICS.vectors]
    assert reason(outs[1]).startswith("model_error: ")
    vectors = [ImageEmbedded.model_validate_json(outs[i].value or b"") for i in (0, 2)]
    assert [v.array()[0] for v in vectors] == [5.0, 7.0]
    assert [(v.source_partition, v.source_offset) for v in vectors] == [(1, 0), (1, 2)]
    assert metric("imgsim_embedder_images_total") == embedded_before + 2


async def test_no_retries_means_one_try(
    batcher: MicroBatcher, fake: FakeEncoder, pool: PreprocessPool
) -> None:
    fake.failures = 1
    [out] = await run([record(0, b"a", png(5))], batcher, pool, retries=0)
    assert out.topic == TOPICS.deadletter
    assert fake.calls == [("image", 1)]


async def test_a_stopping_batcher_fails_the_batch_for_redelivery(
    fake: FakeEncoder, pool: PreprocessPool
) -> None:
    stopped = MicroBatcher(fake, max_batch=8, max_wait_ms=0)
    with pytest.raises(BatcherClosedError):
        await run([record(0, b"a", png(5))], stopped, pool)
