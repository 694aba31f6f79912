"""Dynamic micro-batching of embedding work on asyncio.

Callers submit rows (preprocessed image tensors or texts) and await their vectors; one
worker task forms batches and runs the encoder in ONE dedicated single-thread executor,
so the event loop never blocks and torch always gets the whole intra-op thread pool.

Decisions:

- Three queues: urgent images (search queries), texts (search queries, always urgent)
  and bulk images (indexing). A batch is taken from the urgent queue whose head is
  oldest, and from the bulk queue only when no urgent row waits. Images and texts never
  share a forward pass (different towers).
- A bulk batch waits at most ``max_wait_ms`` counted from the arrival of its oldest row,
  or until ``max_batch`` rows are there; it stops waiting as soon as an urgent row
  arrives. Urgent batches wait ``urgent_wait_ms`` (default 0: they run as soon as the
  model is free, and the queries that arrive during a pass form the next batch).
- Queries never wait behind a whole bulk batch: a bulk pass runs a step at a time
  (:meth:`ImageEncoder.encode_images_in_steps`, one transformer block a step), and
  between two steps every waiting urgent row is served first. A query therefore waits
  at most one block of a bulk pass (~1/13 of it), while bulk batches keep the size that
  gives the model its best throughput. The steps run on the same inference thread, one
  after another, so nothing runs two passes at once.
- A smaller bulk batch hands the inference thread several steps at a time, about one
  full batch's step of work (``max_batch // rows`` steps): a query waits no longer than
  behind one step of a full batch, and a pass of 2 images makes 2 trips between the
  event loop and the inference thread instead of 15.
- While searches come (one in the last ``SEARCHING_S``), a bulk step runs on slices of
  ``search_step_rows`` rows, and a trip ends after the slice (or step) during which a
  query came, so the query waits for a slice instead of a whole step. Measured on the
  2-core dev machine (OpenVINO, 16 rows): a step took ~32 ms alone, and under saturating
  bulk indexing a query waited ~30 ms for it (median, traced); slices of 4 took a pass
  431 ms against 373 whole, bare. In the stack, with searches at concurrency 1 during
  bulk indexing, the searches' p50 fell from 84-87 to 65-80 ms and bulk work went on at
  7.3-7.8 images/s against 11.2-12.5: the faster searches also come more often and take
  more of the model. Without searches the steps run whole. Cutting the step in progress
  short (OpenVINO can cancel a request) was tried instead: at concurrency 1 a query came
  back while the step it had cut ran again, so the next one waited for that rerun.
- One future per row: a caller's rows may span batches, and an encoder exception fails
  only the rows of that batch (and so only their callers). A caller that gives up
  (cancelled) leaves cancelled futures, which the worker skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar, cast

import numpy as np
import torch
from opentelemetry.trace import SpanContext, get_current_span
from prometheus_client import Histogram

from imgsim_core.tasks import cancel_and_wait
from imgsim_core.tracing import batch_step, linked_span
from imgsim_embedder.errors import BatcherClosedError, InferenceError
from imgsim_embedder.model import ImageEncoder, SliceRows, Steps, Vectors

log = logging.getLogger(__name__)

SEARCHING_S = 1.0  # a query row within this long: bulk steps run in slices

Kind = Literal["image", "urgent_image", "text"]
T = TypeVar("T", torch.Tensor, str)
R = TypeVar("R")

BATCH_SIZE = Histogram(
    "imgsim_embedder_batch_size",
    "Rows in one forward pass.",
    ["kind"],
    buckets=(1, 2, 4, 8, 16, 24, 32, 48, 64, 128),
)
INFERENCE_SECONDS = Histogram(
    "imgsim_embedder_inference_seconds",
    "Seconds of one forward pass.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


@dataclass(slots=True)
class _Row(Generic[T]):
    payload: T
    future: asyncio.Future[Vectors]
    arrived: float = field(default_factory=time.monotonic)
    # The caller's span: the forward pass links to it.
    origin: SpanContext = field(default_factory=lambda: get_current_span().get_span_context())


class MicroBatcher:
    """Forms batches from concurrent callers and runs them through an :class:`ImageEncoder`."""

    def __init__(
        self,
        encoder: ImageEncoder,
        max_batch: int,
        max_wait_ms: float,
        *,
        urgent_max_batch: int | None = None,
        urgent_wait_ms: float = 0.0,
        search_step_rows: int = 0,
    ) -> None:
        if max_batch < 1 or (urgent_max_batch is not None and urgent_max_batch < 1):
            raise ValueError("batch sizes must be at least 1")
        self.encoder = encoder
        self.max_batch = max_batch
        self.urgent_max_batch = urgent_max_batch or max_batch
        self.max_wait_s = max(0.0, max_wait_ms) / 1000
        self.urgent_wait_s = max(0.0, urgent_wait_ms) / 1000
        self._urgent: deque[_Row[torch.Tensor]] = deque()
        self._texts: deque[_Row[str]] = deque()
        self._bulk: deque[_Row[torch.Tensor]] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._preempted_s = 0.0  # urgent work run inside the current bulk pass
        self.search_step_rows = max(0, search_step_rows)
        self._last_search = -SEARCHING_S  # monotonic time of the last query row
        self.accepted = 0  # rows taken into a queue since construction, all kinds

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self.running:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgsim-infer")
        self._task = asyncio.create_task(self._run(), name="imgsim-batcher")

    async def stop(self) -> None:
        """Cancel the worker, fail the rows still waiting, release the inference thread."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        closed = BatcherClosedError("the embedder is stopping")
        _fail(self._urgent, closed)
        _fail(self._texts, closed)
        _fail(self._bulk, closed)
        self._urgent.clear()
        self._texts.clear()
        self._bulk.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def embed_images(self, tensors: Sequence[torch.Tensor], *, urgent: bool) -> Vectors:
        """Vectors of preprocessed images, in order: (len(tensors), dim)."""
        with batch_step("embed images", rows=len(tensors), urgent=urgent):
            return await self._submit(self._urgent if urgent else self._bulk, tensors)

    async def embed_text(self, texts: Sequence[str]) -> Vectors:
        """Vectors of texts, in order; texts are always urgent."""
        with batch_step("embed texts", rows=len(texts)):
            return await self._submit(self._texts, texts)

    async def _submit(self, queue: deque[_Row[T]], payloads: Sequence[T]) -> Vectors:
        if not payloads:
            return np.empty((0, self.encoder.dim), dtype=np.float32)
        if not self.running:
            raise BatcherClosedError("the batcher is not running")
        loop = asyncio.get_running_loop()
        rows = [_Row(p, loop.create_future()) for p in payloads]
        queue.extend(rows)
        self.accepted += len(rows)
        if queue is not self._bulk:
            self._last_search = time.monotonic()
        self._arrived.set()
        vectors = await asyncio.gather(*(r.future for r in rows))
        return np.stack(vectors)

    def _next_queue(self) -> deque[_Row[torch.Tensor]] | deque[_Row[str]] | None:
        """The urgent queue whose head waited longest, else bulk, else None."""
        for queue in (self._urgent, self._texts, self._bulk):
            while queue and queue[0].future.done():  # the caller gave up
                queue.popleft()
        if self._urgent and self._texts:
            return (
                self._urgent if self._urgent[0].arrived <= self._texts[0].arrived else self._texts
            )
        return self._urgent or self._texts or self._bulk or None

    async def _run(self) -> None:
        while True:
            queue = self._next_queue()
            if queue is None:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if len(queue) < self._limit(queue):
                await self._fill(queue)
                queue = self._next_queue()  # an urgent row may have come meanwhile
                if queue is None:
                    continue
            if queue is self._bulk:
                await self._run_batch("image", self._take(self._bulk), self._encode_bulk)
            else:
                await self._serve_urgent()

    async def _serve_urgent(self) -> None:
        """Run urgent batches (queries) until none waits."""
        while True:
            queue = self._next_queue()
            if queue is self._texts:
                await self._run_batch("text", self._take(self._texts), self._encode_texts)
            elif queue is self._urgent:
                await self._run_batch("urgent_image", self._take(self._urgent), self._encode_images)
            else:
                return

    def _limit(self, queue: deque[_Row[torch.Tensor]] | deque[_Row[str]]) -> int:
        return self.max_batch if queue is self._bulk else self.urgent_max_batch

    async def _fill(self, queue: deque[_Row[torch.Tensor]] | deque[_Row[str]]) -> None:
        """Wait until ``queue`` holds a full batch or its oldest row has waited long enough."""
        wait = self.max_wait_s if queue is self._bulk else self.urgent_wait_s
        deadline = queue[0].arrived + wait
        while len(queue) < self._limit(queue):
            if queue is self._bulk and self._urgent_waits():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()

    def _take(self, queue: deque[_Row[T]]) -> list[_Row[T]]:
        rows: list[_Row[T]] = []
        limit = self.max_batch if queue is self._bulk else self.urgent_max_batch
        while queue and len(rows) < limit:
            row = queue.popleft()
            if not row.future.done():
                rows.append(row)
        return rows

    async def _run_batch(
        self, kind: Kind, rows: list[_Row[T]], encode: Callable[[list[T]], Awaitable[Vectors]]
    ) -> None:
        if not rows:
            return
        payloads = [r.payload for r in rows]
        started = time.perf_counter()
        if kind == "image":
            self._preempted_s = 0.0
        try:
            with linked_span(f"{kind} forward pass", [r.origin for r in rows], rows=len(rows)):
                vectors = await encode(payloads)
            if vectors.shape[0] != len(rows):
                raise InferenceError(f"the encoder gave {vectors.shape[0]} rows for {len(rows)}")
        except asyncio.CancelledError:
            _fail(rows, BatcherClosedError("the embedder is stopping"))
            raise
        except Exception as exc:  # the encoder's failure belongs to this batch's callers only
            log.exception("%s batch of %d rows failed", kind, len(rows))
            if isinstance(exc, InferenceError):
                _fail(rows, exc)
            else:
                error = InferenceError(f"{type(exc).__name__}: {exc}")
                error.__cause__ = exc
                _fail(rows, error)
            return
        seconds = time.perf_counter() - started - (self._preempted_s if kind == "image" else 0)
        BATCH_SIZE.labels(kind).observe(len(rows))
        INFERENCE_SECONDS.labels(kind).observe(seconds)
        log.debug("%s batch of %d rows in %.1f ms", kind, len(rows), seconds * 1000)
        for row, vector in zip(rows, vectors, strict=True):
            if not row.future.done():
                row.future.set_result(vector)

    def _on_inference_thread(self, fn: Callable[..., R], *args: object) -> asyncio.Future[R]:
        assert self._executor is not None
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _encode_images(self, tensors: list[torch.Tensor]) -> Vectors:
        return await self._on_inference_thread(_stack_and_encode, self.encoder, tensors)

    async def _encode_texts(self, texts: list[str]) -> Vectors:
        return await self._on_inference_thread(self.encoder.encode_texts, texts)

    async def _encode_bulk(self, tensors: list[torch.Tensor]) -> Vectors:
        """A bulk pass a run of steps at a time, serving the urgent rows that wait between
        runs."""
        steps = await self._on_inference_thread(
            _stack_and_start, self.encoder, tensors, self._slice_rows
        )
        try:
            while (vectors := await self._trip(steps, len(tensors))) is None:
                if self._urgent_waits():
                    paused = time.perf_counter()
                    await self._serve_urgent()
                    self._preempted_s += time.perf_counter() - paused
        finally:  # on the inference thread: a step may still run there after a cancel
            if self._executor is not None:
                self._executor.submit(steps.close)
        return vectors

    def _trip(self, steps: Steps, rows: int) -> asyncio.Future[Vectors | None]:
        """One trip: about a full batch's step of work (``max_batch // rows`` steps, or as
        many slices), which ends early when a query waits."""
        run = max(1, self.max_batch // min(rows, self._slice_rows() or rows))
        return self._on_inference_thread(_advance, steps, run, self._urgent_waits)

    def _urgent_waits(self) -> bool:
        """Whether a query row waits; read on the inference thread too (a deque's length
        is safe to read from another thread)."""
        return bool(self._urgent or self._texts)

    def _slice_rows(self) -> int:
        """Rows a bulk step runs at a time: a slice while searches come, else all (0).
        Asked on the inference thread before each step."""
        if time.monotonic() - self._last_search < SEARCHING_S:
            return self.search_step_rows
        return 0


def _stack_and_encode(encoder: ImageEncoder, tensors: list[torch.Tensor]) -> Vectors:
    return encoder.encode_images(torch.stack(tensors))


def _stack_and_start(
    encoder: ImageEncoder, tensors: list[torch.Tensor], slice_rows: SliceRows
) -> Steps:
    return encoder.encode_images_in_steps(torch.stack(tensors), slice_rows)


def _advance(steps: Steps, count: int, urgent_waits: Callable[[], bool]) -> Vectors | None:
    """Run up to ``count`` steps, none after one that ends while a query waits; the vectors
    once the pass is done, else None."""
    try:
        for _ in range(count):
            next(steps)
            if urgent_waits():
                break
    except StopIteration as done:
        return cast(Vectors, done.value)
    return None


def _fail(rows: Iterable[_Row[T]], error: BaseException) -> None:
    for row in rows:
        if not row.future.done():
            row.future.set_exception(error)
