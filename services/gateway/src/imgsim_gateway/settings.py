"""Gateway settings: env prefix ``GATEWAY_``, nested groups with ``__``."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from imgsim_core.settings import ImageLimits, KafkaSettings, RedisSettings


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_nested_delimiter="__")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    limits: ImageLimits = ImageLimits()
    search_timeout_s: float = Field(default=10.0, gt=0, description="Deadline of one search.")
    status_timeout_s: float = Field(default=3.0, gt=0)
    api_keys: SecretStr | None = Field(default=None, description="Comma-separated API keys.")
    log_level: str = "INFO"
    json_logs: bool = True

    @property
    def max_body_bytes(self) -> int:
        """Largest request body: a base64 image at the size limit plus JSON around it."""
        return self.limits.max_bytes * 4 // 3 + self.limits.max_metadata_bytes + 64 * 1024
