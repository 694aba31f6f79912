"""``imgsim-indexer``: run the indexer until SIGINT/SIGTERM (FastStream handles both)."""

from __future__ import annotations

import asyncio

from imgsim_core.telemetry import configure_telemetry
from imgsim_indexer.app import create_app
from imgsim_indexer.settings import IndexerSettings


def main() -> None:
    settings = IndexerSettings()
    configure_telemetry("imgsim-indexer", level=settings.log_level, json_logs=settings.json_logs)
    asyncio.run(create_app(settings).run())


if __name__ == "__main__":
    main()
