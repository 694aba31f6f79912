"""MicroBatcher with a fake encoder: priorities, batch bounds, failures, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
import torch
from embedder_fakes import FAIL, FakeEncoder, row
from pydantic import ValidationError

from imgsim_embedder import batcher as batcher_module
from imgsim_embedder.batcher import MicroBatcher
from imgsim_embedder.errors import BatcherClosedError, InferenceError
from imgsim_embedder.model import SliceRows, Steps, Vectors
from imgsim_embedder.settings import EmbedderSettings


async def until_accepted(batcher: MicroBatcher, rows: int) -> None:
    """Wait until the batcher has taken ``rows`` rows into its queues in all."""
    for _ in range(10_000):  # loop turns, not time: each lets the submitting tasks run
        if batcher.accepted >= rows:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"the batcher took {batcher.accepted} rows, not {rows}")


@pytest.fixture
def fake() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture
async def batcher(fake: FakeEncoder) -> AsyncIterator[MicroBatcher]:
    b = MicroBatcher(fake, max_batch=4, max_wait_ms=20)
    b.start()
    yield b
    fake.gate.set()
    await b.stop()


async def test_rows_come_back_in_order_in_bounded_batches(
    batcher: MicroBatcher, fake: FakeEncoder
) -> None:
    vectors = await batcher.embed_images([row(float(i)) for i in range(10)], urgent=False)
    assert vectors.shape == (10, 4)
    assert vectors[:, 0].tolist() == [float(i) for i in range(10)]
    assert [n for _, n in fake.calls] == [4, 4, 2]


async def test_concurrent_callers_share_a_batch(batcher: MicroBatcher, fake: FakeEncoder) -> None:
    results = await asyncio.gather(
        *(batcher.embed_images([row(float(i))], urgent=True) for i in range(3))
    )
    assert [float(r[0, 0]) for r in results] == [0.0, 1.0, 2.0]
    assert fake.calls == [("image", 3)]


async def test_urgent_rows_go_before_bulk(batcher: MicroBatcher, fake: FakeEncoder) -> None:
    fake.gate.clear()
    first = asyncio.create_task(batcher.embed_images([row(0.0)] * 4, urgent=False))
    await asyncio.to_thread(fake.entered.wait, 5)  # the first bulk batch is running
    bulk = asyncio.create_task(batcher.embed_images([row(1.0)] * 4, urgent=False))
    await until_accepted(batcher, 8)
    query = asyncio.create_task(batcher.embed_images([row(2.0)], urgent=True))
    text = asyncio.create_task(batcher.embed_text(["cat"]))
    await until_accepted(batcher, 10)
    fake.gate.set()
    await asyncio.gather(first, bulk, query, text)
    assert fake.calls == [("image", 4), ("image", 1), ("text", 1), ("image", 4)]


async def test_queries_run_between_the_steps_of_a_bulk_pass(
    batcher: MicroBatcher, fake: FakeEncoder
) -> None:
    fake.step_gate.clear()
    bulk = asyncio.create_task(
        batcher.embed_images([row(float(i)) for i in range(4)], urgent=False)
    )
    assert await asyncio.to_thread(fake.stepped.wait, 5)  # the bulk pass is between steps
    query = asyncio.create_task(batcher.embed_images([row(9.0)], urgent=True))
    text = asyncio.create_task(batcher.embed_text(["cat"]))
    await until_accepted(batcher, 6)
    fake.step_gate.set()
    vectors, image, texts = await asyncio.gather(bulk, query, text)
    # the bulk pass had started first, yet both queries ran before its forward pass ended
    assert fake.calls == [("image", 1), ("text", 1), ("image", 4)]
    assert vectors[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert image[0, 0] == 9.0
    assert texts[0, 0] == 3.0


class EightSteps(FakeEncoder):
    def encode_images_in_steps(
        self, batch: torch.Tensor, slice_rows: SliceRows | None = None
    ) -> Steps:
        for _ in range(8):
            yield
        return self.encode_images(batch)


@pytest.mark.parametrize(
    ("rows", "searching", "trips", "run"),
    [(4, False, 9, 1), (2, False, 5, 2), (1, False, 3, 4), (4, True, 5, 2), (1, True, 3, 4)],
)
async def test_a_trip_to_the_inference_thread_holds_about_a_full_batchs_step(
    rows: int, searching: bool, trips: int, run: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight ``next`` calls end the pass on the ninth. A full batch (4 rows) makes one trip
    a step, 2 rows two steps a trip, 1 row four. While searches come, a step of 4 rows is
    two slices of 2 (``search_step_rows``): two slices a trip, still one step's work."""
    advanced: list[int] = []
    advance = batcher_module._advance

    def counting(steps: Steps, count: int, urgent_waits: Callable[[], bool]) -> Vectors | None:
        advanced.append(count)
        return advance(steps, count, urgent_waits)

    monkeypatch.setattr(batcher_module, "_advance", counting)
    b = MicroBatcher(EightSteps(), max_batch=4, max_wait_ms=0, search_step_rows=2)
    b.start()
    try:
        if searching:
            await b.embed_text(["a query a moment ago"])
        vectors = await b.embed_images([row(float(i)) for i in range(rows)], urgent=False)
    finally:
        await b.stop()
    assert vectors[:, 0].tolist() == [float(i) for i in range(rows)]
    assert len(advanced) == trips
    assert set(advanced) == {run}


def test_a_trip_ends_after_the_step_during_which_a_query_came() -> None:
    ran: list[int] = []

    def steps() -> Steps:
        for i in range(8):
            ran.append(i)
            yield
        return np.zeros((1, 4), dtype=np.float32)

    waits = iter([False, True])
    assert batcher_module._advance(steps(), 8, lambda: next(waits)) is None
    assert ran == [0, 1]


async def test_bulk_steps_run_in_slices_only_while_searches_come(
    fake: FakeEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = MicroBatcher(fake, max_batch=4, max_wait_ms=0, search_step_rows=2)
    b.start()
    try:
        await b.embed_images([row(1.0)] * 4, urgent=False)  # no search yet: whole steps
        await b.embed_images([row(2.0)], urgent=True)
        await b.embed_images([row(3.0)] * 4, urgent=False)  # a search just came: slices
        monkeypatch.setattr(batcher_module, "SEARCHING_S", 0.0)  # as if a while had passed
        await b.embed_images([row(4.0)] * 4, urgent=False)
    finally:
        await b.stop()
    assert fake.slices == [0, 2, 0]


async def test_images_and_texts_never_share_a_pass(
    batcher: MicroBatcher, fake: FakeEncoder
) -> None:
    image, text = await asyncio.gather(
        batcher.embed_images([row(5.0)], urgent=True), batcher.embed_text(["a dog", "x"])
    )
    assert image[:, 0].tolist() == [5.0]
    assert text[:, 0].tolist() == [5.0, 1.0]
    assert sorted(fake.calls) == [("image", 1), ("text", 2)]


async def test_an_encoder_failure_fails_only_its_batch(fake: FakeEncoder) -> None:
    b = MicroBatcher(fake, max_batch=1, max_wait_ms=0)
    b.start()
    try:
        bad, good = await asyncio.gather(
            b.embed_images([row(FAIL)], urgent=False),
            b.embed_images([row(3.0)], urgent=False),
            return_exceptions=True,
        )
        assert isinstance(bad, InferenceError)
        assert isinstance(good, np.ndarray)
        assert good[0, 0] == 3.0
        again = await b.embed_images([row(4.0)], urgent=False)  # the worker lives on
        assert again[0, 0] == 4.0
    finally:
        await b.stop()


async def test_stop_cancels_the_worker_and_fails_waiting_callers(fake: FakeEncoder) -> None:
    b = MicroBatcher(fake, max_batch=2, max_wait_ms=0)
    b.start()
    fake.gate.clear()
    running = asyncio.create_task(b.embed_images([row(1.0)] * 2, urgent=False))
    await asyncio.to_thread(fake.entered.wait, 5)
    waiting = asyncio.create_task(b.embed_images([row(2.0)], urgent=False))
    await until_accepted(b, 3)
    await b.stop()
    fake.gate.set()
    assert not b.running
    for task in (running, waiting):
        with pytest.raises(BatcherClosedError):
            await task
    with pytest.raises(BatcherClosedError):
        await b.embed_images([row(3.0)], urgent=False)


async def test_empty_input_needs_no_pass(batcher: MicroBatcher, fake: FakeEncoder) -> None:
    assert (await batcher.embed_images([], urgent=False)).shape == (0, 4)
    assert fake.calls == []


@pytest.mark.parametrize(
    ("setting", "on_gpu", "rows"),
    [("auto", False, 4), ("auto", True, 0), ("2", True, 2), ("0", False, 0)],
)
def test_slices_are_the_cpus_default_and_never_a_gpus(
    setting: str, on_gpu: bool, rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU runs a step of a big bulk batch in milliseconds: slices would only slow it."""
    monkeypatch.setenv("EMBEDDER_SEARCH_STEP_ROWS", setting)
    assert EmbedderSettings().step_rows_while_searching(on_gpu) == rows


def test_a_negative_slice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDDER_SEARCH_STEP_ROWS", "-1")
    with pytest.raises(ValidationError):
        EmbedderSettings()
