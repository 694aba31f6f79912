"""One place that sets up logs and metrics for every service.

Logs are JSON lines on stderr (python-json-logger) with the service name; metrics are
prometheus-client collectors, served on ``/metrics`` by the gateway and by a small HTTP
endpoint in the workers.
"""

from __future__ import annotations

import logging
import sys

from prometheus_client import start_http_server
from pythonjsonlogger.json import JsonFormatter

# Logged once a service consumes; the local stack and the tests wait for it.
READY_MESSAGE = "imgsim service ready"


class _ServiceFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        return True


def configure_telemetry(service: str, *, level: str = "INFO", json_logs: bool = True) -> None:
    """JSON logs to stderr for ``service``; idempotent."""
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "imgsim", False):
            root.removeHandler(existing)
    handler = logging.StreamHandler(sys.stderr)
    handler.imgsim = True  # type: ignore[attr-defined]
    if json_logs:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(service)s",
                rename_fields={"levelname": "level", "asctime": "time", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_ServiceFilter(service))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka", "httpx", "faststream"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Serve the default Prometheus registry on ``http://host:port/metrics`` (0 = off)."""
    if port:
        start_http_server(port, addr=host)
