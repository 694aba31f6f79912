"""The vector store interface the indexer writes and searches through.

Two implementations speak it: :class:`~imgsim_indexer.edge_store.EdgeStore` (embedded
Qdrant Edge on disk, the default) and :class:`~imgsim_indexer.server_store.ServerStore`
(a Qdrant server or cluster); :func:`imgsim_indexer.app.open_store` picks one from the
settings. The interface is two parts: :class:`PointStore` (one collection's points: what
the handlers use) and :class:`Aliases` (the real collections behind the name and the
alias between them: what a reindex uses); :class:`VectorStore` is both.

Module tree: :mod:`~imgsim_indexer.payload` (the schema) ← :mod:`~imgsim_indexer.filters`
← the two stores ← ``app``; this module imports only the payload types; the stores take its two
helpers and meet its protocols structurally.

Decisions shared by both:

- The point id is :func:`imgsim_core.contracts.point_id` (UUIDv5 of the image id), so a
  redelivered event overwrites, never duplicates.
- The payload is :mod:`imgsim_indexer.payload`'s.
- Searches take a metadata ``filter`` (see :mod:`imgsim_indexer.filters`) and image ids
  to leave out; ``open`` creates the payload indexes ``metadata.<key>`` it is given
  (idempotent, also on an existing collection).
- Distance is cosine; a search ``threshold`` is the minimum cosine score.
- ``upsert`` and ``delete`` return once the write is durable, so the caller may commit
  the Kafka offsets of the records it applied.
- The store is reached through its ``collection`` name, which is an alias (server) or a
  pointer (Edge) to a versioned real collection ``<collection>_v<N>``, so a reindex can
  build a new one and switch later; a collection in use is never dropped
  (:func:`check_droppable`).
- The filter translation stays in each store: the clauses are store-neutral
  (:mod:`~imgsim_indexer.filters`), and what is left is the rendering into each client's
  own classes, which share no types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from imgsim_core.contracts import Condition, Vector
from imgsim_indexer.errors import StoreError
from imgsim_indexer.payload import Hit, Point, Scanned, StoredImage

# The points (or records) a write works through between two turns of the event loop, and
# the most a Qdrant Edge ``update`` takes at once (:meth:`EdgeStore.upsert
# <imgsim_indexer.edge_store.EdgeStore.upsert>`, :func:`~imgsim_indexer.serving.plan_in_slices`).
# Writes at full speed with a search every 5 ms (bench/RESULTS.md, 2026-12-07): search p50
# 53–92 ms, p99 73–105 with whole batches of 1,024; p50 4–6, p99 15–17 with slices of
# 128 (256: p99 25–34; 64: p99 10, where the flush, ~10 ms once a batch, is the longest
# hold); the write rate alone the same at 64, 128, 256 and whole, within this VM's spread.
SLICE_POINTS = 128


class PointStore(Protocol):
    """One collection's points, as the indexer reads and writes them. Every method may
    raise ``StoreError``."""

    name: str  # "qdrant-edge" or "qdrant-server"
    collection: str  # the name searches and writes go through (alias or pointer)
    current: str | None  # the real collection this store has open

    async def open(self) -> None:
        """Connect or load; create the collection (cosine, ``dim``) when it is missing."""

    async def close(self) -> None: ...

    async def upsert(self, points: Sequence[Point]) -> None:
        """Insert or replace points by image id; durable when it returns."""

    async def delete(self, image_ids: Sequence[str]) -> None:
        """Delete points by image id (missing ids are fine); durable when it returns."""

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
        """The ``top_k`` nearest points by cosine score, best first, score ≥ ``threshold``.

        Only points whose metadata meets every condition of ``filter``, and none of the
        image ids in ``exclude``. A filter value the store cannot compare raises
        :class:`~imgsim_indexer.errors.BadFilterError`.
        """

    async def scan(
        self, *, cursor: str | None, limit: int, filter: Mapping[str, Condition] | None = None
    ) -> tuple[list[Scanned], str | None]:
        """Up to ``limit`` points in point-id order from ``cursor`` (a point id, included),
        with their vectors, and the cursor of the next page (None at the end)."""
        ...

    async def same_content(
        self, content_sha256: str, *, limit: int, filter: Mapping[str, Condition] | None = None
    ) -> list[str]:
        """Ids of up to ``limit`` images whose bytes have this SHA-256."""
        ...

    async def count(self) -> int: ...

    async def get(self, image_id: str) -> StoredImage | None: ...

    async def sample_model(self) -> str | None:
        """The model id of any one stored point (None when the collection is empty)."""
        ...

    async def get_vector(self, image_id: str) -> Vector | None:
        """The stored vector of an image, or None when it is not indexed."""


class Aliases(Protocol):
    """The real collections behind a store's name, and the alias that picks one."""

    collection: str
    current: str | None

    async def collections(self) -> list[str]:
        """The real collections of this store's name, oldest first."""
        ...

    async def aliased(self) -> str | None:
        """The real collection the alias (Edge: CURRENT) points at."""
        ...

    async def switch_alias(self, physical: str) -> None:
        """Point the alias at ``physical`` atomically."""
        ...

    async def drop_collection(self, physical: str) -> None:
        """Remove a real collection that the alias does not point at."""
        ...


class VectorStore(PointStore, Aliases, Protocol):
    """A store as the indexer opens it: its points and its collections."""


def collection_version(name: str) -> int:
    """N of a real collection named ``<collection>_v<N>`` (0 for any other name)."""
    tail = name.rsplit("_v", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def check_droppable(physical: str, *in_use: str | None) -> None:
    """Refuse to drop a real collection that is open or that the alias points at."""
    if physical in in_use:
        raise StoreError(f"{physical} is in use and cannot be dropped")
