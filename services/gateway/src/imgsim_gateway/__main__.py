"""``imgsim-gateway``: serve the REST API with uvicorn, in one process or several.

With ``GATEWAY_WORKERS`` > 1 uvicorn's supervisor starts that many worker processes on
the one socket (and restarts one that dies); each builds its app from the environment
(:func:`worker_app`). Their Prometheus counters go to files in ``PROMETHEUS_MULTIPROC_DIR``
(a fresh temporary folder unless it is set), which every worker's ``/metrics`` adds up.
"""

from __future__ import annotations

import os
import tempfile

import uvicorn
from fastapi import FastAPI

from imgsim_core.telemetry import configure_telemetry
from imgsim_gateway.app import create_app
from imgsim_gateway.settings import GatewaySettings


def worker_app() -> FastAPI:
    """The app of one worker process: uvicorn imports and calls this in each."""
    settings = GatewaySettings()
    configure_telemetry("imgsim-gateway", level=settings.log_level, json_logs=settings.json_logs)
    return create_app(settings)


def main() -> None:
    settings = GatewaySettings()
    configure_telemetry("imgsim-gateway", level=settings.log_level, json_logs=settings.json_logs)
    if settings.workers == 1:
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=settings.access_log,
            timeout_graceful_shutdown=10,
        )
        return
    # Before the workers start: each imports prometheus_client with it set.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="imgsim-metrics-"))
    uvicorn.run(
        "imgsim_gateway.__main__:worker_app",
        factory=True,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=settings.access_log,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
