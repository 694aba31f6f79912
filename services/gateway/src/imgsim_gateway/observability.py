"""The gateway's metrics (Prometheus) and tracing hooks.

:func:`instrument` wires both into the app: a ``/metrics`` endpoint (the default
registry: these collectors and those of libs; with several worker processes, every
process's counters added up, see :class:`Registry`), request count and latency by method,
route template and status (:class:`RequestMetrics`), and OpenTelemetry's FastAPI and
Redis instrumentations, so a request is a server span and each Redis command (caches,
rate limits) a client span inside it. The tracer provider itself comes from
``configure_telemetry`` in ``__main__``.

Without a tracer provider (no exporter configured) the instrumentations are left out, not
installed as no-ops: on a cached search they cost ~20 % of the gateway's CPU (656 against
805 searches/s with wrk, one run each) for spans nobody records. A ``traceparent`` a
client sends is still carried on (:class:`TraceContext`), so the workers, if they export,
continue the client's trace.
"""

from __future__ import annotations

import time

from fastapi import FastAPI, Response
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CACHE_HITS = Counter(
    "imgsim_gateway_cache_hits_total", "Cache hits, by cache (embedding, result).", ["cache"]
)
CACHE_MISSES = Counter(
    "imgsim_gateway_cache_misses_total", "Cache misses, by cache (embedding, result).", ["cache"]
)
REQUESTS = Counter(
    "imgsim_gateway_requests_total",
    "HTTP requests, by method, route template and status.",
    ["method", "route", "status"],
)
REQUEST_SECONDS = Histogram(
    "imgsim_gateway_request_duration_seconds",
    "Seconds from request to the end of the response, by method, route template and status.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

METRICS_PATH = "/metrics"
# Not traced: scraped and probed every few seconds.
UNTRACED_URLS = "/metrics,/api/v1/health"
UNMATCHED = "<unmatched>"  # one label for every path no route matched (no cardinality blow-up)


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP request by its route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: BaseRoute | None = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            labels = (scope["method"], template, str(status))
            REQUESTS.labels(*labels).inc()
            REQUEST_SECONDS.labels(*labels).observe(time.perf_counter() - started)


class TraceContext:
    """ASGI middleware for an untraced gateway: the request runs in the trace context its
    ``traceparent``/``tracestate`` headers carry, so the records it produces carry it on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in (b"traceparent", b"tracestate")
        }
        if not carrier:
            await self.app(scope, receive, send)
            return
        token = otel_context.attach(propagate.extract(carrier))
        try:
            await self.app(scope, receive, send)
        finally:
            otel_context.detach(token)


# The cache counters' family names (without _total), and what each counts.
_CACHE_COUNTERS = {"imgsim_gateway_cache_hits": "hits", "imgsim_gateway_cache_misses": "misses"}


class Registry:
    """Where the gateway's metrics are read: this process's registry, or with several
    worker processes the files they all write (``PROMETHEUS_MULTIPROC_DIR``), added up."""

    def __init__(self, *, processes: int) -> None:
        self.processes = processes

    def read(self) -> CollectorRegistry:
        if self.processes == 1:
            return REGISTRY
        combined = CollectorRegistry()
        MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
        return combined

    async def metrics(self) -> Response:
        return Response(generate_latest(self.read()), media_type=CONTENT_TYPE_LATEST)

    def cache_counts(self) -> dict[str, dict[str, int]]:
        """Hits and misses of each cache (embedding, result) since the gateway started."""
        counts = {cache: {"hits": 0, "misses": 0} for cache in ("embedding", "result")}
        for family in self.read().collect():
            kind = _CACHE_COUNTERS.get(family.name)
            if kind is None:
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    cache = counts.setdefault(sample.labels["cache"], {"hits": 0, "misses": 0})
                    cache[kind] += int(sample.value)
        return counts


def instrument(app: FastAPI, registry: Registry, *, traced: bool) -> None:
    """Add ``/metrics``, request metrics and tracing to the app (call once, last);
    ``traced``: whether a tracer provider records spans (:func:`tracing_active`)."""
    # An API route, not a plain Starlette one: only FastAPI's routes put themselves in the
    # scope, so a plain route would be counted as <unmatched>.
    app.add_api_route(METRICS_PATH, registry.metrics, include_in_schema=False)
    app.add_middleware(RequestMetrics)
    if not traced:
        app.add_middleware(TraceContext)
        return
    FastAPIInstrumentor.instrument_app(app, excluded_urls=UNTRACED_URLS)
    if not RedisInstrumentor().is_instrumented_by_opentelemetry:
        RedisInstrumentor().instrument()
