"""CLI settings: env prefix ``IMGSIM_``, nested groups with ``__``; flags override them."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from imgsim_cli.errors import CliError
from imgsim_core.settings import ImageLimits, KafkaSettings


class CliSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="IMGSIM_", env_nested_delimiter="__", extra="ignore"
    )

    url: str = Field(default="http://127.0.0.1:8000", description="The gateway's base URL.")
    api_key: SecretStr | None = Field(
        default=None, description="Sent as X-API-Key; unset for a gateway without keys."
    )
    timeout_s: float = Field(
        default=60.0, gt=0, description="One HTTP call; wait=true can take the gateway 30 s."
    )
    kafka: KafkaSettings = KafkaSettings()
    limits: ImageLimits = ImageLimits()


def load_settings(url: str | None = None, api_key: str | None = None) -> CliSettings:
    """Settings from the environment, with the flags that were given on top."""
    overrides: dict[str, Any] = {}
    if url is not None:
        overrides["url"] = url
    if api_key is not None:
        overrides["api_key"] = SecretStr(api_key)
    try:
        return CliSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"IMGSIM_{'__'.join(str(part) for part in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise CliError(f"invalid settings: {problems}") from None
