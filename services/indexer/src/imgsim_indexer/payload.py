"""The payload schema of a stored point, and its conversions (pure, no I/O).

The payload is ``{"image_id", "model_id", "metadata": {...}, "indexed_at": ISO-8601,
"source_partition", "source_offset", "content_sha256"}``: the images-topic record the
vector came from (so a writer can wait until its own write is indexed) and the SHA-256
of its bytes (keyword-indexed, for exact duplicates). A search always reads
``image_id`` (the point id, a UUIDv5, cannot be reversed) and reads the rest only when
the caller wants metadata. Both stores convert through these functions, so the schema
is written down once; each store only renders it in its own client's types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from imgsim_core.contracts import Metadata, Vector


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


# The payload's field names (also the names a payload index or filter would use).
IMAGE_ID = "image_id"
MODEL_ID = "model_id"
METADATA = "metadata"
INDEXED_AT = "indexed_at"
SOURCE_PARTITION = "source_partition"
SOURCE_OFFSET = "source_offset"
CONTENT_SHA256 = "content_sha256"


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
    array = vector_or_none(vector)
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


def stored_or_none(payload: dict[str, Any] | None) -> StoredImage | None:
    """The stored image of a retrieved point's payload (None: no such point)."""
    return None if payload is None else stored_from_payload(payload)


def vector_or_none(vector: Any) -> Vector | None:
    """A retrieved point's vector (None: no such point, or no plain vector)."""
    return np.asarray(vector, dtype=np.float32) if isinstance(vector, list) else None
