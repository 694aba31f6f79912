"""The embedded vector store: Qdrant Edge (``qdrant-edge-py``) on local disk.

Decisions:

- Qdrant Edge is synchronous. Every call runs in one dedicated single-thread executor,
  which serialises writes (one writer per shard) and never blocks the event loop. Reads
  queue behind writes; a search is sub-millisecond, so this costs little and keeps the
  shard single-threaded from Python's side.
- Layout: ``<path>/<collection>/CURRENT`` names the real shard directory
  (``<collection>_v1`` on first open), which sits beside it. CURRENT is the Edge
  counterpart of the server's alias: a reindex can build ``<collection>_v2`` next to it
  and switch by replacing CURRENT atomically (not implemented yet).
- Durability: the shard keeps its write-ahead log (the default), so an update survives a
  process crash once ``update()`` returns; on top of that every ``upsert``/``delete``
  calls ``flush()`` before returning, which writes the segments to disk (~5 ms per
  64-point batch here). Only then may the caller commit the Kafka offsets.
- Opening an existing shard passes the configuration, so Qdrant Edge checks it: another
  dimension fails at start with :class:`~imgsim_indexer.errors.StoreConfigError`.
- Qdrant Edge raises plain ``Exception``; :meth:`EdgeStore._call` is the one place that
  turns those into :class:`~imgsim_indexer.errors.StoreError`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import qdrant_edge as qe

from imgsim_core.contracts import Vector, point_id
from imgsim_core.settings import QdrantSettings
from imgsim_indexer.errors import StoreConfigError, StoreError, StoreNotOpenError
from imgsim_indexer.store import (
    IMAGE_ID,
    Hit,
    Point,
    StoredImage,
    hit_from_payload,
    stored_from_payload,
    to_payload,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

CURRENT_FILE = "CURRENT"


class EdgeStore:
    """:class:`~imgsim_indexer.store.VectorStore` over an embedded Qdrant Edge shard."""

    name = "qdrant-edge"

    def __init__(self, settings: QdrantSettings, dim: int) -> None:
        self.collection: str = settings.collection
        self.dim = dim
        self.root = Path(settings.path) / settings.collection
        self.current: str | None = None  # the real shard behind ``collection``
        self._shard: qe.EdgeShard | None = None
        self._executor: ThreadPoolExecutor | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-edge")
        await self._call(self._open_sync)
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
        try:
            if self._shard is not None:
                await self._call(self._close_sync)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- writes --------------------------------------------------------------------------

    async def upsert(self, points: Sequence[Point]) -> None:
        if not points:
            return
        edge_points = [
            qe.Point(point_id(p.image_id), _floats(p.vector), to_payload(p)) for p in points
        ]
        await self._call(self._write_sync, qe.UpdateOperation.upsert_points(edge_points))

    async def delete(self, image_ids: Sequence[str]) -> None:
        if not image_ids:
            return
        ids: list[qe.PointId] = [point_id(i) for i in image_ids]
        await self._call(self._write_sync, qe.UpdateOperation.delete_points(ids))

    # -- reads ---------------------------------------------------------------------------

    async def search(
        self, vector: Vector, *, top_k: int, threshold: float | None, with_metadata: bool
    ) -> list[Hit]:
        request = qe.QueryRequest(
            limit=top_k,
            query=qe.Query.Nearest(_floats(vector)),
            with_payload=True if with_metadata else qe.PayloadSelector.Include([IMAGE_ID]),
            with_vector=False,
            score_threshold=threshold,
        )
        found = await self._call(lambda: self._opened().query(request))
        return [
            hit_from_payload(p.payload or {}, p.score, with_metadata=with_metadata) for p in found
        ]

    async def count(self) -> int:
        return await self._call(lambda: self._opened().count(qe.CountRequest(exact=True)))

    async def get(self, image_id: str) -> StoredImage | None:
        ids: list[qe.PointId] = [point_id(image_id)]
        records = await self._call(lambda: self._opened().retrieve(ids, True, False))
        if not records or records[0].payload is None:
            return None
        return stored_from_payload(records[0].payload)

    # -- the executor side ---------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in the store's thread; Qdrant Edge's errors become StoreError."""
        if self._executor is None:
            raise StoreNotOpenError("the qdrant-edge store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except StoreError:
            raise
        except Exception as exc:  # qdrant_edge raises plain Exception
            raise StoreError(f"qdrant-edge: {exc}") from exc

    def _opened(self) -> qe.EdgeShard:
        if self._shard is None:
            raise StoreNotOpenError("the qdrant-edge store is not open")
        return self._shard

    def _config(self) -> qe.EdgeConfig:
        return qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=self.dim, distance=qe.Distance.Cosine)
        )

    def _open_sync(self) -> None:
        if self._shard is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        pointer = self.root / CURRENT_FILE
        current = pointer.read_text().strip() if pointer.exists() else f"{self.collection}_v1"
        shard_path = self.root / current
        if shard_path.is_dir() and any(shard_path.iterdir()):
            try:
                self._shard = qe.EdgeShard.load(str(shard_path), self._config())
            except Exception as exc:  # qdrant_edge raises plain Exception
                raise StoreConfigError(
                    f"qdrant-edge shard {shard_path} does not fit dim={self.dim}, cosine: {exc}"
                ) from exc
        else:
            self._shard = qe.EdgeShard.create(str(shard_path), self._config())
            log.info("created qdrant-edge shard %s (dim=%d, cosine)", shard_path, self.dim)
        if not pointer.exists():
            _write_atomically(pointer, current)
        self.current = current

    def _write_sync(self, operation: qe.UpdateOperation) -> None:
        shard = self._opened()
        shard.update(operation)
        shard.flush()

    def _close_sync(self) -> None:
        shard, self._shard = self._shard, None
        if shard is not None:
            shard.flush()
            shard.close()


def _floats(vector: Vector) -> list[float]:
    values: list[float] = np.asarray(vector, dtype=np.float32).tolist()
    return values


def _write_atomically(path: Path, text: str) -> None:
    """Write a small file so that readers see the old or the new content, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
