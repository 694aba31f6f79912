"""``imgsim-gateway``: serve the REST API with uvicorn."""

from __future__ import annotations

import uvicorn

from imgsim_core.telemetry import configure_telemetry
from imgsim_gateway.app import create_app
from imgsim_gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    configure_telemetry("imgsim-gateway", level=settings.log_level, json_logs=settings.json_logs)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=settings.access_log,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
