"""The indexer's settings: one pydantic-settings class, env prefix ``INDEXER_``.

Shared groups nest with ``__``, e.g. ``INDEXER_KAFKA__BOOTSTRAP_SERVERS`` or
``INDEXER_QDRANT__URL`` (set it to use a Qdrant server instead of embedded Qdrant Edge).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from imgsim_core.settings import KafkaSettings, QdrantSettings


class IndexerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INDEXER_", env_nested_delimiter="__")

    kafka: KafkaSettings = KafkaSettings()
    qdrant: QdrantSettings = QdrantSettings()
    group_id: str = "imgsim-indexer"
    dim: int = Field(default=512, gt=0, description="Dimension of the stored vectors.")
    metrics_port: int = Field(default=0, ge=0, le=65535, description="0 = no metrics endpoint.")
    metrics_host: str = "127.0.0.1"
    log_level: str = "INFO"
    json_logs: bool = True
