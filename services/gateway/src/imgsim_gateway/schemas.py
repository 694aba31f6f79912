"""Request and response bodies of the REST API.

The seed's endpoints keep their shapes (``image_data``, ``image_id``, ``metadata``,
``top_k``, ``threshold``, ``include_metadata``) so its clients keep working; the rest
follows the same conventions.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from imgsim_core.contracts import (
    MAX_EXAMPLES,
    POINT_ID_PATTERN,
    Crop,
    Filter,
    FiniteMetadata,
    Metadata,
    QueryText,
    SearchParams,
    Threshold,
    Weight,
)
from imgsim_core.ids import ImageId

MAX_BATCH_ITEMS = 100
_B64_EXAMPLE = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)


class _Body(BaseModel):
    """Request bodies: unknown fields and coerced types (``"5"`` or ``true`` as an int) refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class IndexRequest(_Body):
    image_data: str = Field(
        description="The image bytes, base64-encoded (JPEG, PNG, WebP, GIF, BMP).",
        examples=[_B64_EXAMPLE],
    )
    image_id: ImageId
    metadata: FiniteMetadata = Field(
        default_factory=dict,
        description="A JSON object stored with the image and returned with results; "
        "NaN and Infinity are refused.",
        examples=[{"tags": ["nature", "landscape"], "source": "user_upload"}],
    )


class IndexAccepted(BaseModel):
    image_id: str
    status: Literal["accepted", "indexed"] = Field(
        description="accepted: durable in Kafka, searchable shortly; indexed: searchable now "
        "(with wait=true)."
    )
    success: bool = Field(default=True, description="The seed's field: always true on 202.")
    message: str = Field(default="", description="The seed's field: what happened, in words.")
    processing_time_ms: float = Field(default=0.0, description="The seed's field: time taken.")
    duplicate_of: list[str] | None = Field(
        default=None, examples=[["products/sku-0042.jpg"]],
        description="With check_duplicates=true: the indexed images with exactly these bytes "
        "(the image itself left out; an empty list: none).",
    )  # fmt: skip


class BatchIndexRequest(_Body):
    items: list[IndexRequest] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


class ErrorDetail(BaseModel):
    code: str = Field(examples=["corrupt_image"])
    message: str = Field(examples=["the PNG data cannot be decoded: image file is truncated"])


class ErrorBody(BaseModel):
    error: ErrorDetail


class BatchItemResult(BaseModel):
    image_id: str
    status: Literal["accepted", "indexed", "rejected"]
    error: ErrorDetail | None = None
    duplicate_of: list[str] | None = Field(default=None, description="As for one image.")


class BatchIndexResponse(BaseModel):
    accepted: int
    rejected: int
    results: list[BatchItemResult] = Field(description="One per item, in request order.")


class DeleteAccepted(BaseModel):
    image_id: str
    status: Literal["accepted", "deleted"]


class ReindexRequest(_Body):
    model_id: str | None = Field(
        default=None,
        max_length=200,
        description="Build the new collection from this model's vectors (a model change); "
        "unset = the current model, replayed without recomputing embeddings.",
        examples=["ViT-B-32/laion2b_s34b_b79k"],
    )


class SearchOptions(SearchParams):
    """What every search asks for, whatever its query: the contract's own fields
    (:class:`~imgsim_core.contracts.SearchParams`), held to a request body's rules."""

    model_config = _Body.model_config


class SearchRequest(SearchOptions):
    image_data: str = Field(description="The query image, base64-encoded.", examples=[_B64_EXAMPLE])
    crop: Crop | None = Field(
        default=None, description="Search with this region of the image (its pixels)."
    )


class QueryExample(_Body):
    """One example: exactly one of ``image_data``, ``image_id`` and ``text``."""

    image_data: str | None = Field(default=None, description="An image, base64-encoded.")
    image_id: ImageId | None = None
    text: QueryText | None = None
    weight: Weight = 1.0
    crop: Crop | None = Field(default=None, description="With image_data: a region of it.")

    @model_validator(mode="after")
    def _exactly_one(self) -> QueryExample:
        if sum(v is not None for v in (self.image_data, self.image_id, self.text)) != 1:
            raise ValueError("an example has exactly one of image_data, image_id and text")
        if self.crop is not None and self.image_data is None:
            raise ValueError("crop goes with image_data only")
        return self


class MultiSearchRequest(SearchOptions):
    positive: list[QueryExample] = Field(
        min_length=1, max_length=MAX_EXAMPLES, description="What the results should be like.",
        examples=[[{"image_id": "cats/1.jpg"}, {"text": "a cat on a sofa", "weight": 0.5}]],
    )  # fmt: skip
    negative: list[QueryExample] = Field(
        default_factory=list, max_length=MAX_EXAMPLES,
        description="What they should not be like.", examples=[[{"text": "a dog"}]],
    )  # fmt: skip


class TextSearchRequest(SearchOptions):
    query: QueryText


class SimilarSearchRequest(SearchOptions):
    image_id: ImageId = Field(description="An indexed image; it is left out of its results.")


class SearchResult(BaseModel):
    image_id: str
    score: float = Field(description="Cosine similarity, higher is closer.")
    metadata: Metadata | None = None
    vector: list[float] | None = Field(default=None, description="With include_vectors.")


class DuplicatesRequest(_Body):
    threshold: Threshold | None = Field(
        default=None, examples=[0.95],
        description="Also group images at least this similar (cosine); unset: exact copies "
        "(the same bytes) only.",
    )  # fmt: skip
    filter: Filter = Field(default=None, description="Only images whose metadata matches.")
    limit: int = Field(default=20, ge=1, le=50, description="Groups on this page, 1-50.")
    max_group: int = Field(default=20, ge=1, le=50, description="Members of a group, 1-50.")
    cursor: str | None = Field(
        default=None, pattern=POINT_ID_PATTERN, description="next_cursor of the previous page."
    )


class DuplicateMember(BaseModel):
    image_id: str
    score: float = Field(description="Cosine similarity to the group's first image.")
    exact: bool = Field(description="The same bytes as the group's first image.")


class DuplicateGroup(BaseModel):
    image_id: str = Field(description="The group's first image (in scan order).")
    members: list[DuplicateMember]
    truncated: bool = Field(description="The group has more than max_group members.")


class DuplicatesResponse(BaseModel):
    groups: list[DuplicateGroup]
    next_cursor: str | None = Field(description="Pass it as cursor for the next page; "
                                    "null: the scan is complete.")  # fmt: skip
    scanned: int = Field(description="Images this page looked at.")
    took_ms: float


class SearchResponse(BaseModel):
    results: list[SearchResult]
    took_ms: float
    cached: bool = Field(default=False, description="Served from the result cache.")
    query_id: str = Field(description="The seed's field: an id of this search (a UUID).")
    total_found: int = Field(description="The seed's field: how many results.")
    search_time_ms: float = Field(description="The seed's field: the same as took_ms.")


class ImageInfo(BaseModel):
    image_id: str
    indexed: bool
    model_id: str | None
    metadata: Metadata
    indexed_at: datetime | None
    content_sha256: str | None = Field(default=None, description="SHA-256 of its bytes.")
    vector: list[float] | None = Field(default=None, description="With include_vector=true.")


class Health(BaseModel):
    """Liveness of this gateway process; ``/ready`` checks what is behind it."""

    status: Literal["healthy"] = "healthy"
    timestamp: datetime = Field(description="The seed's field: now, UTC.")
    version: str = Field(description="The seed's field: imgsim's version.")
    services: dict[str, str] = Field(
        description="The seed's field: each part of this process and its status.",
        examples=[{"gateway": "healthy"}],
    )


class Readiness(BaseModel):
    status: Literal["ready", "degraded", "not_ready"] = Field(
        description=(
            "degraded: Redis is down (no cache) or the vector store does not answer "
            "(searches fail, writes are accepted); not_ready: Kafka is down"
        )
    )
    checks: dict[str, str]


class TopicLag(BaseModel):
    group: str
    lag: int = Field(description="Records the group has yet to process.")


class Stats(BaseModel):
    indexed_images: int
    collection: str
    store: str
    model_id: str | None
    consumer_lag: dict[str, TopicLag] = Field(description="By topic.")
    images_in_per_s: float = Field(description="Image events produced, recent rate.")
    images_out_per_s: float = Field(description="Vectors produced, recent rate.")
    dead_letters: int
    searches_in_flight: int
    uptime_s: float
    cache: dict[str, dict[str, int]] = Field(default_factory=dict)
