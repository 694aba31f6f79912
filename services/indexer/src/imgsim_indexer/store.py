"""The vector store interface the indexer writes and searches through.

Two implementations speak it: :class:`~imgsim_indexer.edge_store.EdgeStore` (embedded
Qdrant Edge on disk, the default) and :class:`~imgsim_indexer.server_store.ServerStore`
(a Qdrant server or cluster); :func:`open_store` picks one from the settings.

Decisions shared by both:

- The point id is :func:`imgsim_core.contracts.point_id` (UUIDv5 of the image id), so a
  redelivered event overwrites, never duplicates.
- The payload is ``{"image_id", "model_id", "metadata": {...}, "indexed_at": ISO-8601,
  "source_partition", "source_offset", "content_sha256"}`` (the images-topic record the
  vector came from, so a writer can wait until its own write is indexed, and the SHA-256
  of its bytes, keyword-indexed, for exact duplicates); a search always reads
  ``image_id`` (a UUIDv5 cannot be reversed) and reads the rest only when the caller
  wants metadata.
- Searches take a metadata ``filter`` (see :mod:`imgsim_indexer.filters`) and image ids
  to leave out; ``open`` creates the payload indexes ``metadata.<key>`` it is given
  (idempotent, also on an existing collection).
- Distance is cosine; a search ``threshold`` is the minimum cosine score.
- ``upsert`` and ``delete`` return once the write is durable, so the caller may commit
  the Kafka offsets of the records it applied.
- The store is reached through its ``collection`` name, which is an alias (server) or a
  pointer (Edge) to a versioned real collection, so a reindex can build a new one and
  switch later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np

from imgsim_core.contracts import Condition, Metadata, Vector
from imgsim_core.settings import QdrantSettings


@dataclass(frozen=True, slots=True)
class Point:
    """One image's vector and payload, as written to the store."""

    image_id: str
    vector: Vector
    model_id: str
    metadata: Metadata
    indexed_at: datetime
    source_partition: int | None = None
    source_offset: int | None = None
    content_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result; ``metadata`` and ``vector`` are None when not asked for."""

    image_id: str
    score: float
    metadata: Metadata | None
    vector: Vector | None = None


@dataclass(frozen=True, slots=True)
class Scanned:
    """One point of a scan in point-id order: what a duplicates search needs of it."""

    image_id: str
    point_id: str
    vector: Vector
    content_sha256: str | None


@dataclass(frozen=True, slots=True)
class StoredImage:
    """What the store holds about an image (without its vector)."""

    image_id: str
    model_id: str
    metadata: Metadata
    indexed_at: datetime
    source_partition: int | None = None
    source_offset: int | None = None
    content_sha256: str | None = None


class VectorStore(Protocol):
    """The vector store as the indexer sees it. Every method may raise ``StoreError``."""

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

    async def get_vector(self, image_id: str) -> Vector | None:
        """The stored vector of an image, or None when it is not indexed."""


# The payload's field names (also the names a payload index or filter would use).
IMAGE_ID = "image_id"
MODEL_ID = "model_id"
METADATA = "metadata"
INDEXED_AT = "indexed_at"
SOURCE_PARTITION = "source_partition"
SOURCE_OFFSET = "source_offset"
CONTENT_SHA256 = "content_sha256"


def collection_version(name: str) -> int:
    """N of a real collection named ``<collection>_v<N>`` (0 for any other name)."""
    tail = name.rsplit("_v", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def to_payload(point: Point) -> dict[str, Any]:
    return {
        IMAGE_ID: point.image_id,
        MODEL_ID: point.model_id,
        METADATA: point.metadata,
        INDEXED_AT: point.indexed_at.isoformat(),
        SOURCE_PARTITION: point.source_partition,
        SOURCE_OFFSET: point.source_offset,
        CONTENT_SHA256: point.content_sha256,
    }


def stored_from_payload(payload: dict[str, Any]) -> StoredImage:
    return StoredImage(
        image_id=payload[IMAGE_ID],
        model_id=payload[MODEL_ID],
        metadata=payload.get(METADATA) or {},
        indexed_at=datetime.fromisoformat(payload[INDEXED_AT]),
        source_partition=payload.get(SOURCE_PARTITION),
        source_offset=payload.get(SOURCE_OFFSET),
        content_sha256=payload.get(CONTENT_SHA256),
    )


def hit_from_payload(
    payload: dict[str, Any], score: float, *, with_metadata: bool, vector: Any = None
) -> Hit:
    metadata = (payload.get(METADATA) or {}) if with_metadata else None
    array = np.asarray(vector, dtype=np.float32) if isinstance(vector, list) else None
    return Hit(image_id=payload[IMAGE_ID], score=float(score), metadata=metadata, vector=array)


def scanned(point_id: Any, payload: dict[str, Any] | None, vector: Any) -> Scanned:
    return Scanned(
        image_id=(payload or {})[IMAGE_ID],
        point_id=str(point_id),
        vector=np.asarray(vector, dtype=np.float32),
        content_sha256=(payload or {}).get(CONTENT_SHA256),
    )


# Payload fields a scan or a search reads besides the metadata.
SCAN_FIELDS = [IMAGE_ID, CONTENT_SHA256]


PayloadIndexes = Mapping[str, str]  # metadata key → "keyword" | "integer" | "float" | "bool"


def open_store(
    settings: QdrantSettings,
    dim: int,
    payload_indexes: PayloadIndexes | None = None,
    *,
    physical: str | None = None,
) -> VectorStore:
    """The server store when ``settings.url`` is set, else Qdrant Edge at ``settings.path``.

    Nothing is opened yet: call ``await store.open()`` (the app's lifespan does).
    """
    # Imported here: both implementations import this module's types.
    if settings.url:
        from imgsim_indexer.server_store import ServerStore

        return ServerStore(settings, dim, payload_indexes=payload_indexes, physical=physical)
    from imgsim_indexer.edge_store import EdgeStore

    return EdgeStore(settings, dim, payload_indexes=payload_indexes, physical=physical)
