"""Gateway settings: env prefix ``GATEWAY_``, nested groups with ``__``."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from imgsim_core.settings import ImageLimits, KafkaSettings, RedisSettings

_WINDOWS = {"second": 1, "minute": 60, "hour": 3600}


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_nested_delimiter="__")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(
        default=1,
        ge=1,
        description="Gateway processes on the one port (uvicorn's workers), each with its own "
        "Kafka producer, reply topic and Redis pool; /metrics and /stats add them up. One "
        "process uses one core: on the 2-core dev machine two took cached searches from "
        "~1,500 to ~2,000/s.",
    )
    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    limits: ImageLimits = ImageLimits()
    search_timeout_s: float = Field(default=10.0, gt=0, description="Deadline of one search.")
    status_timeout_s: float = Field(default=3.0, gt=0)
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="Most seconds between two pieces of a request body (408)."
    )
    decode_budget_pixels: int = Field(
        default=50_000_000,
        ge=1,
        description="Pixels that validation decodes at once, all requests together (~4 bytes "
        "each in memory, twice that while a non-RGB image converts); a request waits for "
        "its share. An image larger than the whole budget is decoded alone.",
    )
    verify_writes: Literal["decode", "header"] = Field(
        default="decode",
        description="How an image to index is checked before it is accepted: decode = "
        "decoded once (a corrupt one is a 422 at once); header = format, size and pixel "
        "count only, and the embedder, which decodes every image anyway, dead-letters a "
        "corrupt one with its reason. The decode was ~45 % of the gateway's CPU per "
        "accepted 124 KiB JPEG: header is for bulk ingestion through the REST API.",
    )
    wait_timeout_s: float = Field(
        default=30.0, gt=0, description="Bound of wait=true; then 504, the write goes on."
    )
    api_keys: SecretStr | None = Field(
        default=None, description="Comma-separated API keys; none set = no authentication."
    )
    rate_limit: str | None = Field(
        default=None, description="N/second, N/minute or N/hour per API key (else client IP)."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated allowed origins; none by default."
    )
    result_cache_ttl_s: int = Field(default=300, ge=0, description="0 turns the cache off.")
    embedding_cache_ttl_s: int = Field(default=86_400, ge=0, description="0 turns it off.")
    thumbnail_cache_ttl_s: int = Field(
        default=86_400, ge=0, description="Thumbnails in Redis; 0 turns the cache off."
    )
    embedder_group: str = Field(
        default="imgsim-embedder", description="Consumer group whose lag on images /stats shows."
    )
    indexer_group: str = Field(
        default="imgsim-indexer", description="Consumer group whose lag on vectors /stats shows."
    )
    log_level: str = "INFO"
    json_logs: bool = True
    access_log: bool = Field(
        default=False,
        description="A log line per request (uvicorn's access log). Off by default: the "
        "requests are counted and timed by route in /metrics, and at a thousand searches a "
        "second the line costs the gateway ~5 % of its CPU.",
    )

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_format(cls, value: str | None) -> str | None:
        if value and not re.fullmatch(r"\s*\d+\s*/\s*(second|minute|hour)\s*", value):
            raise ValueError("GATEWAY_RATE_LIMIT must look like 100/minute (second|minute|hour)")
        return value or None

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @property
    def keys(self) -> list[str]:
        raw = self.api_keys.get_secret_value() if self.api_keys else ""
        return [key.strip() for key in raw.split(",") if key.strip()]

    @property
    def rate(self) -> tuple[int, int] | None:
        """(requests, window seconds), or None when unlimited."""
        if not self.rate_limit:
            return None
        count, window = (part.strip() for part in self.rate_limit.split("/"))
        return int(count), _WINDOWS[window]

    @property
    def max_body_bytes(self) -> int:
        """Largest request body: a base64 image at the size limit plus JSON around it."""
        return self.limits.max_bytes * 4 // 3 + self.limits.max_metadata_bytes + 64 * 1024

    @property
    def max_batch_body_bytes(self) -> int:
        return self.max_body_bytes * 8
