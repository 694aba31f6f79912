"""The embedded vector store: Qdrant Edge (``qdrant-edge-py``) on local disk.

Decisions:

- Qdrant Edge is synchronous. Every call runs in one dedicated single-thread executor,
  which serialises writes (one writer per shard) and keeps the shard single-threaded from
  Python's side. Reads queue behind writes, so a write goes in slices of
  ``SLICE_POINTS`` (:meth:`EdgeStore.upsert`) and a search waits for one slice at most.
- ``<path>/<collection>/CURRENT`` names the real shard, the Edge counterpart of the
  server's alias; how a shard is opened, checked and indexed is
  :mod:`imgsim_indexer.edge_setup`.
- Durability: every ``upsert``/``delete`` calls ``flush()`` before returning, which
  writes the segments to disk (~8 ms for a batch of 1,024 points here). Only then may
  the caller commit the Kafka offsets, so Kafka is the shard's write-ahead log: a new
  shard keeps none of its own (:mod:`~imgsim_indexer.edge_setup`).
- Qdrant Edge raises plain ``Exception``; :meth:`EdgeStore._call` is the one place that
  turns those into :class:`~imgsim_indexer.errors.StoreError`.
- Filters: :func:`~imgsim_indexer.qdrant_filters.edge_filter`.
- Index builds: :class:`~imgsim_indexer.edge_build.IndexBuilds` builds the HNSW index in a
  child process on a copy of the shard and swaps it in; for that the store takes each
  write under ``writes`` (a build pauses them while it copies) and keeps each write in
  ``journal`` while a build runs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import qdrant_edge as qe

from imgsim_core.contracts import Condition, Vector, point_id
from imgsim_core.settings import QdrantSettings
from imgsim_core.tasks import in_slices
from imgsim_indexer import edge_setup as setup
from imgsim_indexer.edge_build import IndexBuilds, Journal
from imgsim_indexer.errors import RequestError, StoreError, StoreNotOpenError
from imgsim_indexer.filters import Match
from imgsim_indexer.payload import (
    CONTENT_SHA256,
    IMAGE_ID,
    SCAN_FIELDS,
    Hit,
    PayloadIndexes,
    Point,
    Scanned,
    StoredImage,
    hit_from_payload,
    scanned,
    stored_or_none,
    to_payload,
    vector_or_none,
)
from imgsim_indexer.qdrant_filters import edge_filter
from imgsim_indexer.store import SLICE_POINTS, check_droppable, collection_version

log = logging.getLogger(__name__)
T = TypeVar("T")


class EdgeStore:
    """:class:`~imgsim_indexer.store.VectorStore` over an embedded Qdrant Edge shard."""

    name = "qdrant-edge"

    def __init__(
        self,
        settings: QdrantSettings,
        dim: int,
        *,
        payload_indexes: PayloadIndexes | None = None,
        physical: str | None = None,
    ) -> None:
        self.collection: str = settings.collection
        self.index = settings.index
        self._search_params = setup.search_params(settings.index)
        self.physical = physical  # open this shard instead of the one CURRENT names
        self.dim = dim
        self.payload_indexes = dict(payload_indexes or {})
        self.root = Path(settings.path) / settings.collection
        self.current: str | None = None  # the real shard behind ``collection``
        self._shard: qe.EdgeShard | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.writes = asyncio.Lock()
        self.journal: Journal | None = None
        self.builds = IndexBuilds(self, settings.build)
        self._reading: asyncio.Task[None] | None = None  # read_in after an open
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-edge")
        await self._call(self._open_sync)
        self._closing = False
        if self.index.on_disk and self._reading is None and self.current is not None:
            live = setup.live_generation(self.root, self.current)
            if live is not None:
                self._reading = asyncio.create_task(self._read_in(live), name="qdrant-edge-read-in")
        self.builds.start()
        log.info(
            "qdrant-edge collection %s → %s at %s (%d points)",
            self.collection,
            self.current,
            self.root,
            await self.count(),
        )

    async def close(self) -> None:
        if self._executor is None:
            return
        await self.builds.stop()
        self._closing = True
        reading, self._reading = self._reading, None
        if reading is not None:
            await reading  # stops at its next read
        try:
            if self._shard is not None:
                await self._call(self._close_sync)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def _read_in(self, path: Path) -> None:
        """The open shard's files into the page cache, on a thread, while it serves."""
        started = time.perf_counter()
        try:
            read = await asyncio.to_thread(setup.read_in, path, lambda: self._closing)
        except Exception as exc:  # only ever a warm-up: searches fault pages in instead
            log.warning("reading in qdrant-edge shard %s: %s", path, exc)
            return
        log.info(
            "read in qdrant-edge shard %s: %.0f MB in %.1f s",
            path.name, read / 2**20, time.perf_counter() - started,
        )  # fmt: skip

    # -- writes --------------------------------------------------------------------------

    async def upsert(self, points: Sequence[Point]) -> None:
        """Converted for the binding and applied :data:`SLICE_POINTS` at a time, then
        flushed once. Converting holds the event loop (~30 µs a point: the binding's
        payload conversion) and ``update``/``flush`` hold the GIL, so a batch of 1,024 in
        one step held every search for 60–100 ms; a search now waits for one slice. Searches
        between two slices may see part of the batch, as they would see it whole a moment
        later; a failure leaves part of it applied and not flushed, which the redelivered
        batch writes again (upserts and deletes are idempotent)."""
        if not points:
            return
        async with self.writes:
            async for part in in_slices(points, SLICE_POINTS):
                edge_points = [
                    qe.Point(point_id(p.image_id), _floats(p.vector), to_payload(p)) for p in part
                ]
                operation = qe.UpdateOperation.upsert_points(edge_points)
                await self._call(self._update_sync, operation, len(edge_points))
            await self._call(self._flush_sync)

    async def delete(self, image_ids: Sequence[str]) -> None:
        if not image_ids:
            return
        ids: list[qe.PointId] = [point_id(i) for i in image_ids]
        async with self.writes:
            await self._call(self._update_sync, qe.UpdateOperation.delete_points(ids), len(ids))
            await self._call(self._flush_sync)

    # -- reads ---------------------------------------------------------------------------

    async def search(
        self,
        vector: Vector,
        *,
        top_k: int,
        threshold: float | None,
        with_metadata: bool,
        filter: Mapping[str, Condition] | None = None,
        exclude: Sequence[str] = (),
        with_vectors: bool = False,
    ) -> list[Hit]:
        request = qe.QueryRequest(
            limit=top_k,
            query=qe.Query.Nearest(_floats(vector)),
            with_payload=True if with_metadata else qe.PayloadSelector.Include([IMAGE_ID]),
            with_vector=with_vectors,
            filter=edge_filter(filter, exclude),
            score_threshold=threshold,
            params=self._search_params,
        )
        found = await self._call(lambda: self._opened().query(request))
        return [
            hit_from_payload(p.payload or {}, p.score, with_metadata=with_metadata, vector=p.vector)
            for p in found
        ]

    async def scan(
        self, *, cursor: str | None, limit: int, filter: Mapping[str, Condition] | None = None
    ) -> tuple[list[Scanned], str | None]:
        def scroll() -> tuple[list[qe.Record], qe.PointId | None]:
            # Built in the call, so a bad cursor is a StoreError like any other.
            return self._opened().scroll(qe.ScrollRequest(
                offset=cursor, limit=limit, filter=edge_filter(filter, ()),
                with_payload=qe.PayloadSelector.Include(SCAN_FIELDS), with_vector=True,
            ))  # fmt: skip

        records, after = await self._call(scroll)
        found = [scanned(r.id, r.payload, r.vector) for r in records]
        return found, None if after is None else str(after)

    async def same_content(
        self, content_sha256: str, *, limit: int, filter: Mapping[str, Condition] | None = None
    ) -> list[str]:
        same = Match(CONTENT_SHA256, content_sha256)
        request = qe.ScrollRequest(
            limit=limit, filter=edge_filter(filter, (), same),
            with_payload=qe.PayloadSelector.Include([IMAGE_ID]), with_vector=False,
        )  # fmt: skip
        records, _ = await self._call(lambda: self._opened().scroll(request))
        return [(r.payload or {})[IMAGE_ID] for r in records]

    async def count(self) -> int:
        return await self._call(lambda: self._opened().count(qe.CountRequest(exact=True)))

    async def get(self, image_id: str) -> StoredImage | None:
        ids: list[qe.PointId] = [point_id(image_id)]
        records = await self._call(lambda: self._opened().retrieve(ids, True, False))
        return stored_or_none(records[0].payload if records else None)

    async def sample_model(self) -> str | None:
        request = qe.ScrollRequest(limit=1, with_payload=True, with_vector=False)
        records, _ = await self._call(lambda: self._opened().scroll(request))
        stored = stored_or_none(records[0].payload if records else None)
        return None if stored is None else stored.model_id

    async def get_vector(self, image_id: str) -> Vector | None:
        ids: list[qe.PointId] = [point_id(image_id)]
        records = await self._call(lambda: self._opened().retrieve(ids, False, True))
        return vector_or_none(records[0].vector if records else None)

    # -- the executor side ---------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in the store's thread; Qdrant Edge's errors become StoreError."""
        if self._executor is None:
            raise StoreNotOpenError("the qdrant-edge store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except (StoreError, RequestError):  # ours already (a bad filter is a RequestError)
            raise
        except Exception as exc:  # qdrant_edge raises plain Exception
            raise StoreError(f"qdrant-edge: {exc}") from exc

    def _update_sync(self, operation: qe.UpdateOperation, points: int) -> None:
        self._opened().update(operation)
        if self.journal is not None:
            self.journal.append(operation, points)

    def _flush_sync(self) -> None:
        self._opened().flush()

    # what an index build (BuildHost) uses
    on_shard_thread = _call

    def live_shard(self) -> qe.EdgeShard:
        return self._opened()

    def swap_shard(self, shard: qe.EdgeShard) -> qe.EdgeShard:
        old, self._shard = self._opened(), shard
        return old

    def _opened(self) -> qe.EdgeShard:
        if self._shard is None:
            raise StoreNotOpenError("the qdrant-edge store is not open")
        return self._shard

    def _open_sync(self) -> None:
        if self._shard is not None:
            return
        shard, self.current = setup.open_shard(
            self.root, self.collection, self.dim, self.physical, self.index
        )
        self._shard = shard
        setup.ensure_payload_indexes(shard, self.payload_indexes, self.index)

    # -- collections (the alias) ----------------------------------------------------------

    async def collections(self) -> list[str]:
        """The shards of this collection on disk, oldest first."""
        prefix = f"{self.collection}_v"
        names = [p.name for p in self.root.iterdir() if p.is_dir() and p.name.startswith(prefix)]
        return sorted(names, key=collection_version)

    async def aliased(self) -> str | None:
        pointer = self.root / setup.CURRENT_FILE
        return pointer.read_text().strip() if pointer.exists() else None

    async def switch_alias(self, physical: str) -> None:
        """Point CURRENT at ``physical`` atomically (readers see the old or the new name)."""
        await asyncio.to_thread(setup.write_atomically, self.root / setup.CURRENT_FILE, physical)

    async def drop_collection(self, physical: str) -> None:
        check_droppable(physical, self.current, await self.aliased())
        await asyncio.to_thread(setup.remove_shard, self.root, physical)

    def _close_sync(self) -> None:
        shard, self._shard = self._shard, None
        if shard is not None:
            shard.flush()
            shard.close()


def _floats(vector: Vector) -> list[float]:
    """A vector as the binding takes it: any sequence of floats, so an ``array('f')``
    over the float32 bytes (0.3 µs) rather than a list of 512 Python floats (6–17 µs,
    the most of it allocation when a batch builds a thousand of them)."""
    values = array("f", np.asarray(vector, dtype=np.float32).tobytes())
    return cast(list[float], values)  # the binding's stubs say list; it reads a sequence
