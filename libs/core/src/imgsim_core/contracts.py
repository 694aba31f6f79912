"""Event payloads exchanged between the services (contract version 1).

The images topic carries raw image bytes (see :mod:`imgsim_core.topics`); every other
topic carries one of these models as JSON. Vectors travel as base64 of packed
little-endian float32, which is 4 bytes a dimension before base64 instead of ~10 as JSON
numbers.
"""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Annotated

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, JsonValue

# Point ids are derived from image ids, so a redelivered event overwrites, never duplicates.
POINT_NAMESPACE = uuid.UUID("6f1d6c2e-1b8e-5c55-9a51-2f3b2f6a9e10")

Metadata = dict[str, JsonValue]
Vector = npt.NDArray[np.float32]

MAX_IMAGE_ID_LENGTH = 256
TopK = Annotated[int, Field(ge=1, le=100, description="How many results, 1–100.")]
Threshold = Annotated[
    float, Field(ge=-1.0, le=1.0, description="Minimum cosine similarity of a result.")
]


def point_id(image_id: str) -> str:
    """The vector store's point id of an image: UUIDv5 of the image id."""
    return str(uuid.uuid5(POINT_NAMESPACE, image_id))


def pack_vector(vector: Vector) -> str:
    """float32 vector → base64 of its little-endian bytes."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def unpack_vector(packed: str) -> Vector:
    """Inverse of :func:`pack_vector`."""
    return np.frombuffer(base64.b64decode(packed, validate=True), dtype="<f4").astype(np.float32)


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ImageEmbedded(_Event):
    """Value of a record on the vectors topic (key = image id; null value = deleted)."""

    image_id: str = Field(max_length=MAX_IMAGE_ID_LENGTH)
    model_id: str
    dim: int = Field(gt=0)
    vector: str = Field(description="base64 of packed little-endian float32, L2-normalised")
    metadata: Metadata = Field(default_factory=dict)
    source_offset: int | None = Field(
        default=None, description="Offset of the image record this vector was computed from."
    )
    embedded_at: datetime

    def array(self) -> Vector:
        return unpack_vector(self.vector)


class SearchParams(_Event):
    """What every search asks for, whatever its query."""

    top_k: TopK = 10
    threshold: Threshold | None = None
    include_metadata: bool = True


class SearchRequested(SearchParams):
    """A search that needs an embedding (queries topic). Exactly one of image or text."""

    image: str | None = Field(default=None, description="base64 image bytes")
    text: str | None = Field(default=None, max_length=1000)
    deadline_ms: int = Field(description="Epoch ms; the search is dropped after it.")


class VectorSearchRequested(SearchParams):
    """A search with its query vector (searches topic)."""

    vector: str = Field(description="base64 of packed little-endian float32")
    model_id: str
    deadline_ms: int


class SearchHit(_Event):
    image_id: str
    score: float
    metadata: Metadata | None = None


class SearchReplied(_Event):
    """The answer to a search, sent to the asking gateway's reply topic."""

    hits: list[SearchHit] = Field(default_factory=list)
    error: str | None = None
    error_code: str | None = None


class StatusRequested(_Event):
    """Asks the indexer how it stands (status topic)."""

    deadline_ms: int


class IndexerStatus(_Event):
    """The indexer's answer to :class:`StatusRequested`."""

    ready: bool
    store: str = Field(description="qdrant-edge or qdrant-server")
    collection: str
    indexed: int = Field(description="Points in the collection.")
    error: str | None = None
