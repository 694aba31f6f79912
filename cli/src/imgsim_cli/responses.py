"""The gateway's response bodies that the CLI reads (unknown fields are ignored)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, JsonValue

Metadata = dict[str, JsonValue]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SearchResult(_Body):
    image_id: str
    score: float
    metadata: Metadata | None = None


class SearchResponse(_Body):
    results: list[SearchResult]
    took_ms: float
    cached: bool = False


class ImageInfo(_Body):
    image_id: str
    indexed: bool
    model_id: str | None = None
    metadata: Metadata = Field(default_factory=dict)
    indexed_at: datetime | None = None


class TopicLag(_Body):
    group: str
    lag: int


class Stats(_Body):
    indexed_images: int
    collection: str | None = None
    store: str | None = None
    model_id: str | None = None
    consumer_lag: dict[str, TopicLag] = Field(default_factory=dict)
    images_in_per_s: float | None = None
    images_out_per_s: float | None = None
    dead_letters: int | None = None
    searches_in_flight: int | None = None
    uptime_s: float | None = None
    cache: dict[str, dict[str, int]] = Field(default_factory=dict)
