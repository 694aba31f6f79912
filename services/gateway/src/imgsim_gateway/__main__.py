"""``imgsim-gateway``: serve the REST API with uvicorn, in one process or several.

With ``GATEWAY_WORKERS`` > 1 uvicorn's supervisor starts that many worker processes on
the one socket (and restarts one that dies); each builds its app from the environment
(:func:`worker_app`). Their Prometheus counters go to files in ``PROMETHEUS_MULTIPROC_DIR``
(a fresh temporary folder unless it is set), which every worker's ``/metrics`` adds up.
A folder made here is removed when the supervisor exits; one that is set is left as it
is (Prometheus' client asks that it be emptied between runs: the deployment's job).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
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
    app = "imgsim_gateway.__main__:worker_app"
    with metrics_dir():
        _serve(settings, app, factory=True, workers=settings.workers)


@contextlib.contextmanager
def metrics_dir() -> Iterator[str]:
    """``PROMETHEUS_MULTIPROC_DIR`` for the workers, set before they start (each imports
    prometheus_client with it): the one the environment names, or a temporary folder
    that is removed on the way out."""
    if given := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield given
        return
    made = tempfile.mkdtemp(prefix="imgsim-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    try:
        yield made
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        shutil.rmtree(made, ignore_errors=True)


if __name__ == "__main__":
    main()
