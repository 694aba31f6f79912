"""``imgsim-gateway``: serve the REST API with uvicorn, in one process or several.

With ``GATEWAY_WORKERS`` > 1 uvicorn's supervisor starts that many worker processes on
the one socket (and restarts one that dies); each builds its app from the environment
(:func:`worker_app`). Their Prometheus counters go to files in ``PROMETHEUS_MULTIPROC_DIR``
(a fresh temporary folder unless it is set), which every worker's ``/metrics`` adds up.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import uvicorn
from fastapi import FastAPI

from imgsim_core.telemetry import configure_telemetry
from imgsim_gateway.app import create_app
from imgsim_gateway.settings import GatewaySettings


def _settings() -> GatewaySettings:
    settings = GatewaySettings()
    configure_telemetry("imgsim-gateway", level=settings.log_level, json_logs=settings.json_logs)
    return settings


def worker_app() -> FastAPI:
    """The app of one worker process: uvicorn imports and calls this in each."""
    return create_app(_settings())


def _serve(settings: GatewaySettings, app: FastAPI | str, **workers: Any) -> None:
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=settings.access_log,
        timeout_graceful_shutdown=10,
        **workers,
    )


def main() -> None:
    settings = _settings()
    if settings.workers == 1:
        _serve(settings, create_app(settings))
        return
    # Before the workers start: each imports prometheus_client with it set.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="imgsim-metrics-"))
    _serve(settings, "imgsim_gateway.__main__:worker_app", factory=True, workers=settings.workers)


if __name__ == "__main__":
    main()
