"""Request and response bodies of the REST API (the seed's shapes, kept for its users)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from imgsim_core.contracts import MAX_IMAGE_ID_LENGTH, Metadata, Threshold, TopK

ImageId = Field(
    min_length=1,
    max_length=MAX_IMAGE_ID_LENGTH,
    pattern=r"^[^\x00-\x1f\x7f]+$",
    description="Your id for the image: 1–256 printable characters.",
    examples=["products/sku-1234.jpg"],
)


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_data: str = Field(
        description="The image bytes, base64-encoded (JPEG, PNG, WebP, GIF, BMP)."
    )
    image_id: str = ImageId
    metadata: Metadata = Field(default_factory=dict, examples=[{"tags": ["nature"]}])


class IndexAccepted(BaseModel):
    image_id: str
    status: str = Field(default="accepted", description="Queued; searchable within seconds.")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_data: str = Field(description="The query image, base64-encoded.")
    top_k: TopK = 10
    threshold: Threshold | None = Field(default=None, examples=[0.7])
    include_metadata: bool = True


class SearchResult(BaseModel):
    image_id: str
    score: float = Field(description="Cosine similarity, higher is closer.")
    metadata: Metadata | None = None


class SearchResponse(BaseModel):
    results: list[SearchResult]
    took_ms: float


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str = Field(description="ready, or not_ready when a dependency is down")
    checks: dict[str, str]


class Stats(BaseModel):
    indexed_images: int
    collection: str
    store: str
    searches_in_flight: int


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail
