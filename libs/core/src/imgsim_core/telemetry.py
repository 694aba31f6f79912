"""One place that sets up logs, traces and metrics for every service.

Logs are JSON lines on stderr (python-json-logger) with the service name and, inside a
span, its ``trace_id`` and ``span_id``; traces are exported as the standard ``OTEL_*``
variables say (see :mod:`imgsim_core.tracing`); metrics are prometheus-client
collectors, served on ``/metrics`` by the gateway and by a small HTTP endpoint in the
workers, which also answers their liveness on ``/healthz`` (see :mod:`imgsim_core.liveness`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from opentelemetry import trace
from prometheus_client import make_wsgi_app
from pythonjsonlogger.json import JsonFormatter

from imgsim_core.liveness import Liveness
from imgsim_core.tracing import configure_tracing

# Logged once a service consumes; the local stack and the tests wait for it.
READY_MESSAGE = "imgsim service ready"


class _ServiceFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        return True


class _TraceFilter(logging.Filter):
    """Adds ``trace_id`` and ``span_id`` (hex) of the current span, when there is one."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = trace.format_trace_id(context.trace_id)
            record.span_id = trace.format_span_id(context.span_id)
        return True


class RepeatFilter(logging.Filter):
    """Bounds the log lines of a dependency's outage: the first warning or error of each
    kind (logger and message template) passes, then at most one every ``window_s``
    seconds, which says how many like it were left out.

    Kafka clients log each failed reconnect (tens of thousands of lines a minute across
    the services while a broker is down); the services say when an outage is over.
    """

    def __init__(self, prefixes: tuple[str, ...], window_s: float = 30.0) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.window_s = window_s
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # → (passed at, left out)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(self.prefixes):
            return True
        key = (record.name, str(record.msg))
        passed, left_out = self._last.get(key, (-self.window_s, 0))
        if record.created - passed < self.window_s:
            self._last[key] = (passed, left_out + 1)
            return False
        self._last[key] = (record.created, 0)
        if left_out:
            record.msg = f"{record.msg} ({left_out} more like it in {self.window_s:.0f} s)"
        return True


def broker_logging() -> dict[str, Any]:
    """FastStream's logging for a worker's broker: ``KafkaBroker(..., **broker_logging())``.

    Without a logger of ours FastStream adds a handler of its own, which writes colored
    text beside the JSON lines, and logs "Received" and "Processed" at INFO for each
    message: two lines a search in each worker. Through this logger they reach the JSON
    handler, at DEBUG; FastStream's warnings and errors keep their levels.
    """
    return {"logger": logging.getLogger("imgsim.broker"), "log_level": logging.DEBUG}


def configure_telemetry(
    service: str,
    *,
    level: str = "INFO",
    json_logs: bool = True,
    environ: Mapping[str, str] | None = None,
) -> None:
    """JSON logs to stderr and tracing for ``service``; idempotent.

    Tracing follows the standard ``OTEL_*`` variables of ``environ`` (default: the
    process environment, which the OpenTelemetry exporters read as well).
    """
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
    handler.addFilter(_TraceFilter())
    handler.addFilter(RepeatFilter(("aiokafka", "kafka", "faststream")))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka", "httpx", "faststream"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    configure_tracing(service, os.environ if environ is None else environ)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds
        pass


def worker_endpoint(liveness: Liveness | None) -> Callable[..., Iterable[bytes]]:
    """The WSGI app of a worker's port: ``/healthz`` (liveness), anything else metrics."""
    metrics = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/healthz" or liveness is None:
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        verdict = liveness.check()
        body = json.dumps({"status": verdict.status}).encode()
        code = "200 OK" if verdict.alive else "503 Service Unavailable"
        start_response(code, [("Content-Type", "application/json")])
        return [body]

    return app


def serve_metrics(port: int, host: str = "127.0.0.1", liveness: Liveness | None = None) -> None:
    """Serve the default Prometheus registry on ``http://host:port/metrics`` and the
    worker's liveness on ``/healthz`` from a daemon thread (port 0 = off)."""
    if not port:
        return
    server = make_server(
        host, port, worker_endpoint(liveness), server_class=_Server, handler_class=_QuietHandler
    )
    threading.Thread(target=server.serve_forever, name="imgsim-metrics", daemon=True).start()
