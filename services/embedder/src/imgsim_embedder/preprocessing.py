"""Decoding and preprocessing images off the event loop and the inference thread, queries first.

Decisions:

- Two thread pools, one for the images of bulk indexing and one for the images of
  search queries. An images batch submits all its images at once (up to
  ``bulk_max_records``, 64), so a query's image in the same first-in-first-out pool
  waited behind them: measured on 2 cores under bulk indexing, 240 ms between a query's
  arrival and the start of its decode, against 5 ms idle.
- While a query is in flight (from its decode to the end of its forward pass, see
  :meth:`PreprocessPool.query`), a bulk image waits before its decode starts, so the
  query's decode and forward pass get the cores; the batcher already runs the query
  between the steps of a bulk pass (:mod:`imgsim_embedder.batcher`). A bulk image waits at
  most ``bulk_wait_s`` at a time, so a steady stream of queries slows indexing but never
  stops it. Images already being decoded finish (a 640×480 JPEG takes ~3 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from imgsim_core.images import Box, decode_rgb
from imgsim_core.settings import ImageLimits
from imgsim_embedder.model import ImageEncoder

BULK_WAIT_S = 0.5  # the longest a bulk image waits for the queries in flight, each time


def prepare(
    encoder: ImageEncoder, data: bytes, limits: ImageLimits, crop: Box | None = None
) -> torch.Tensor:
    """Decode (and crop) and preprocess one image; runs in a pool thread."""
    return encoder.preprocess(decode_rgb(data, limits, crop=crop))


class PreprocessPool:
    """The bulk and the query preprocessing threads, and the queries in flight."""

    def __init__(self, threads: int, *, bulk_wait_s: float = BULK_WAIT_S) -> None:
        self._bulk = ThreadPoolExecutor(threads, thread_name_prefix="imgsim-prep")
        self._queries = ThreadPoolExecutor(threads, thread_name_prefix="imgsim-prep-query")
        self.bulk_wait_s = bulk_wait_s
        self._lock = threading.Lock()
        self._in_flight = 0
        self._no_queries = threading.Event()
        self._no_queries.set()

    def bulk(
        self, encoder: ImageEncoder, data: bytes, limits: ImageLimits
    ) -> asyncio.Future[torch.Tensor]:
        """A bulk image's tensor, prepared when no query is in flight (or after a wait)."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._bulk, self._prepare_bulk, encoder, data, limits)

    async def query_image(
        self, encoder: ImageEncoder, data: bytes, limits: ImageLimits, crop: Box | None = None
    ) -> torch.Tensor:
        """A query image's tensor, on the query threads: never behind bulk images."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._queries, prepare, encoder, data, limits, crop)

    @contextlib.contextmanager
    def query(self) -> Iterator[None]:
        """Marks a query in flight: bulk images wait to start while one is."""
        with self._lock:
            self._in_flight += 1
            self._no_queries.clear()
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._no_queries.set()

    def shutdown(self, *, wait: bool = False) -> None:
        """Stop both pools; images not started yet are cancelled."""
        self._bulk.shutdown(wait=wait, cancel_futures=True)
        self._queries.shutdown(wait=wait, cancel_futures=True)

    def __enter__(self) -> PreprocessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)

    def _prepare_bulk(
        self, encoder: ImageEncoder, data: bytes, limits: ImageLimits
    ) -> torch.Tensor:
        self._no_queries.wait(self.bulk_wait_s)
        return prepare(encoder, data, limits)
