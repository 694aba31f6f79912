"""The vector store interface the indexer writes and searches through.

Two implementations speak it: :class:`~imgsim_indexer.edge_store.EdgeStore` (embedded
Qdrant Edge on disk, the default) and :class:`~imgsim_indexer.server_store.ServerStore`
(a Qdrant server or cluster); :func:`open_store` picks one from the settings.

Decisions shared by both:

- The point id is :func:`imgsim_core.contracts.point_id` (UUIDv5 of the image id), so a
  redelivered event overwrites, never duplicates.
- The payload is ``{"image_id", "model_id", "metadata": {...}, "indexed_at": ISO-8601}``;
  a search always reads ``image_id`` (a UUIDv5 cannot be reversed) and reads the rest only
  when the caller wants metadata.
- Distance is cosine; a search ``threshold`` is the minimum cosine score.
- ``upsert`` and ``delete`` return once the write is durable, so the caller may commit
  the Kafka offsets of the records it applied.
- The store is reached through its ``collection`` name, which is an alias (server) or a
  pointer (Edge) to a versioned real collection, so a reindex can build a new one and
  switch later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from imgsim_core.contracts import Metadata, Vector
from imgsim_core.settings import QdrantSettings


@dataclass(frozen=True, slots=True)
class Point:
    """One image's vector and payload, as written to the store."""

    image_id: str
    vector: Vector
    model_id: str
    metadata: Metadata
    indexed_at: datetime


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result; ``metadata`` is None when it was not asked for."""

    image_id: str
    score: float
    metadata: Metadata | None


@dataclass(frozen=True, slots=True)
class StoredImage:
    """What the store holds about an image (without its vector)."""

    image_id: str
    model_id: str
    metadata: Metadata
    indexed_at: datetime


class VectorStore(Protocol):
    """The vector store as the indexer sees it. Every method may raise ``StoreError``."""

    name: str  # "qdrant-edge" or "qdrant-server"
    collection: str  # the name searches and writes go through (alias or pointer)

    async def open(self) -> None:
        """Connect or load; create the collection (cosine, ``dim``) when it is missing."""

    async def close(self) -> None: ...

    async def upsert(self, points: Sequence[Point]) -> None:
        """Insert or replace points by image id; durable when it returns."""

    async def delete(self, image_ids: Sequence[str]) -> None:
        """Delete points by image id (missing ids are fine); durable when it returns."""

    async def search(
        self, vector: Vector, *, top_k: int, threshold: float | None, with_metadata: bool
    ) -> list[Hit]:
        """The ``top_k`` nearest points by cosine score, best first, score ≥ ``threshold``."""

    async def count(self) -> int: ...

    async def get(self, image_id: str) -> StoredImage | None: ...


# The payload's field names (also the names a payload index or filter would use).
IMAGE_ID = "image_id"
MODEL_ID = "model_id"
METADATA = "metadata"
INDEXED_AT = "indexed_at"


def to_payload(point: Point) -> dict[str, Any]:
    return {
        IMAGE_ID: point.image_id,
        MODEL_ID: point.model_id,
        METADATA: point.metadata,
        INDEXED_AT: point.indexed_at.isoformat(),
    }


def stored_from_payload(payload: dict[str, Any]) -> StoredImage:
    return StoredImage(
        image_id=payload[IMAGE_ID],
        model_id=payload[MODEL_ID],
        metadata=payload.get(METADATA) or {},
        indexed_at=datetime.fromisoformat(payload[INDEXED_AT]),
    )


def hit_from_payload(payload: dict[str, Any], score: float, *, with_metadata: bool) -> Hit:
    metadata = (payload.get(METADATA) or {}) if with_metadata else None
    return Hit(image_id=payload[IMAGE_ID], score=float(score), metadata=metadata)


def open_store(settings: QdrantSettings, dim: int) -> VectorStore:
    """The server store when ``settings.url`` is set, else Qdrant Edge at ``settings.path``.

    Nothing is opened yet: call ``await store.open()`` (the app's lifespan does).
    """
    # Imported here: both implementations import this module's types.
    if settings.url:
        from imgsim_indexer.server_store import ServerStore

        return ServerStore(settings, dim)
    from imgsim_indexer.edge_store import EdgeStore

    return EdgeStore(settings, dim)
