"""The indexer's settings: one pydantic-settings class, env prefix ``INDEXER_``.

Shared groups nest with ``__``, e.g. ``INDEXER_KAFKA__BOOTSTRAP_SERVERS``,
``INDEXER_QDRANT__URL`` (set it to use a Qdrant server instead of embedded Qdrant Edge),
``INDEXER_REDIS__URL`` (the gateway's result cache, whose generation counter the indexer
bumps) or ``INDEXER_MODEL__WEIGHTS`` (with ``INDEXER_MODEL__NAME`` etc.: the one model
whose vectors the collection holds). ``INDEXER_PAYLOAD_INDEXES`` is JSON, e.g.
``'{"tags":"keyword","year":"integer"}'``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints
from pydantic_settings import BaseSettings, SettingsConfigDict

from imgsim_core.contracts import FILTER_KEY_PATTERN
from imgsim_core.settings import (
    ImageLimits,
    KafkaSettings,
    ModelSettings,
    QdrantSettings,
    RedisSettings,
)

PayloadIndexType = Literal["keyword", "integer", "float", "bool"]
MetadataKey = Annotated[str, StringConstraints(pattern=FILTER_KEY_PATTERN)]


def default_payload_indexes() -> dict[str, PayloadIndexType]:
    return {"tags": "keyword", "source": "keyword"}


class IndexerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INDEXER_", env_nested_delimiter="__")

    kafka: KafkaSettings = KafkaSettings()
    qdrant: QdrantSettings = QdrantSettings()
    redis: RedisSettings = RedisSettings()
    model: ModelSettings = ModelSettings()
    limits: ImageLimits = ImageLimits()  # max_metadata_bytes: vectors with more are refused
    group_id: str = "imgsim-indexer"
    vectors_max_records: int = Field(
        default=1024,
        ge=1,
        description="Most vectors-topic records in one store write (one flush). Measured "
        "(bench/RESULTS.md): 5,900 points/s at 64 a batch, 9,900 at 1,024; a write of 1,024 "
        "takes ~0.1 s, which a record written alone never waits for.",
    )
    dim: int = Field(default=512, gt=0, description="Dimension of the stored vectors.")
    payload_indexes: dict[MetadataKey, PayloadIndexType] = Field(
        default_factory=default_payload_indexes,
        description="Metadata keys to index for filters (payload path metadata.<key>), "
        "with their type. Filters on other keys work too, unindexed.",
    )
    reindex_retention_s: float | None = Field(
        default=None,
        ge=0,
        description="Drop the old collection this long after a reindex switched; "
        "unset = keep it until `imgsim reindex --drop-old`.",
    )
    metrics_port: int = Field(default=0, ge=0, le=65535, description="0 = no metrics endpoint.")
    metrics_host: str = "127.0.0.1"
    log_level: str = "INFO"
    json_logs: bool = True
