"""``imgsim-embedder``: read the settings from the environment and run the service."""

from __future__ import annotations

import asyncio

from imgsim_core.telemetry import configure_telemetry
from imgsim_embedder.app import create_app
from imgsim_embedder.settings import EmbedderSettings


def main() -> None:
    settings = EmbedderSettings()
    configure_telemetry("imgsim-embedder", level=settings.log_level, json_logs=settings.json_logs)
    asyncio.run(create_app(settings).run())


if __name__ == "__main__":
    main()
