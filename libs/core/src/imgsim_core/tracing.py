"""Tracing across the services: OTLP export, W3C trace context in Kafka headers, batch spans.

**Export** is set up from the standard variables (:func:`configure_tracing`, called by
``configure_telemetry``): ``OTEL_TRACES_EXPORTER`` = ``otlp`` | ``console`` | ``none``;
when it is unset, ``otlp`` if ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or its ``_TRACES_`` form)
is set, else ``none``, so a process without a collector sends nothing.
``OTEL_EXPORTER_OTLP_PROTOCOL`` = ``http/protobuf`` (default) | ``grpc``; the exporters
and the batch span processor read their own variables (endpoint, headers, timeouts,
``OTEL_BSP_*``), the SDK reads ``OTEL_TRACES_SAMPLER`` and ``OTEL_RESOURCE_ATTRIBUTES``.
``OTEL_SERVICE_NAME`` overrides the service's own name (``imgsim-gateway``, ...).

Why :func:`configure_tracing` picks the exporter itself instead of the SDK's
environment-based setup: that setup is ``opentelemetry.sdk._configuration`` (private) and
runs through ``opentelemetry-instrument`` with a distro, which also starts metrics and
logs exporters (imgsim's metrics are Prometheus) and monkey-patches libraries; and two of
its defaults are wrong for imgsim: with nothing set it exports OTLP/gRPC to
``localhost:4317`` and logs an export error every few seconds on a machine without a
collector, and its default protocol is gRPC where most collectors users run here (and
the dev stack's) take ``http/protobuf``. So only the choice of exporter class is here;
everything each exporter and processor reads is left to the SDK's own variables. The
module keeps the provider it installed (``_provider``) because OpenTelemetry lets the
global provider be set only once: that makes :func:`configure_tracing` idempotent and
:func:`shutdown_tracing` flush exactly what it installed.

**Propagation**: every record imgsim produces carries ``traceparent``/``tracestate``
(:func:`trace_headers`, used by ``produced_headers``); consumers continue the trace they
receive. A batch subscriber gets one *batch span* linked to the context of every record
it holds, and one span per record, child of that record's own trace (a new trace when the
record came without one). Records produced from an input record carry that record's span
(``produced_headers(source=record)``), so one image is one trace from the gateway to the
vector store. Shared work of the batch (a forward pass, a store write) is a
:func:`batch_step`: a span in the batch's trace, mirrored with the same timing into every
record's trace.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from faststream import BaseMiddleware
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
)

log = logging.getLogger(__name__)

TRACE_HEADERS = ("traceparent", "tracestate")
EXPORTERS = ("otlp", "console", "none")
PROTOCOLS = ("http/protobuf", "grpc")

_provider: TracerProvider | None = None


def _tracer(tracer: Tracer | None = None) -> Tracer:
    return tracer or trace.get_tracer("imgsim")


# --------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------


def _exporter(environ: Mapping[str, str]) -> SpanExporter | None:
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    name = (environ.get("OTEL_TRACES_EXPORTER") or ("otlp" if endpoint else "none")).lower()
    if name not in EXPORTERS:
        raise ValueError(f"OTEL_TRACES_EXPORTER must be one of {', '.join(EXPORTERS)}: {name!r}")
    if name == "none":
        return None
    if name == "console":
        return ConsoleSpanExporter()
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter()
    raise ValueError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL must be one of {', '.join(PROTOCOLS)}: {protocol!r}"
    )


def configure_tracing(service: str, environ: Mapping[str, str]) -> TracerProvider | None:
    """Install the global tracer provider once; ``None`` when no exporter is configured.

    The provider flushes and shuts down at interpreter exit (``shutdown_on_exit``); call
    :func:`shutdown_tracing` to do it earlier.
    """
    global _provider
    if _provider is not None:
        return _provider
    exporter = _exporter(environ)
    if exporter is None:
        return None
    name = environ.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info("tracing: %s exporter, service %s", type(exporter).__name__, name)
    return provider


def tracing_active() -> bool:
    """Whether a tracer provider records spans (this module's, or one set by other means)."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def shutdown_tracing() -> None:
    """Export the spans still buffered and stop the exporter (idempotent)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None


# --------------------------------------------------------------------------------------
# Propagation through Kafka headers
# --------------------------------------------------------------------------------------


def trace_headers(context: Context | None = None) -> list[tuple[str, bytes]]:
    """``traceparent``/``tracestate`` of ``context`` (default: the current one)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return [(k, v.encode()) for k, v in carrier.items() if k in TRACE_HEADERS]


def extract_context(headers: Sequence[tuple[str, bytes | str]] | None) -> Context:
    """The trace context a record carries; an empty context when it carries none."""
    carrier: dict[str, str] = {}
    for key, value in headers or ():
        if key in TRACE_HEADERS:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            carrier[key] = text
    return propagate.extract(carrier, context=Context()) if carrier else Context()


def _record_id(record: Any) -> tuple[str, int, int]:
    return (record.topic, record.partition, record.offset)


def source_context(record: Any) -> Context:
    """The context a record derived from ``record`` should carry.

    Inside :func:`traced_batch` that is the record's own span; elsewhere the context the
    record came with, or the current one if it came with none.
    """
    batch = _current_batch.get()
    if batch is not None and (span := batch.record_spans.get(_record_id(record))) is not None:
        return trace.set_span_in_context(span, Context())
    received = extract_context(getattr(record, "headers", None))
    if trace.get_current_span(received).get_span_context().is_valid:
        return received
    return otel_context.get_current()


# --------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------


@dataclass
class TracedBatch:
    """The spans of one consumed batch: the batch span and one span per record."""

    tracer: Tracer
    span: Span
    record_spans: dict[tuple[str, int, int], Span] = field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, name: str, **attributes: str | int | float | bool) -> Iterator[Span]:
        """A span of shared work, mirrored (same start and end) into every record's trace."""
        started = time.time_ns()
        failed: BaseException | None = None
        with self.tracer.start_as_current_span(name, attributes=attributes) as span:
            try:
                yield span
            except BaseException as exc:
                failed = exc
                raise
            finally:
                ended = time.time_ns()
                link = Link(span.get_span_context())
                for record_span in self.record_spans.values():
                    mirror = self.tracer.start_span(
                        name,
                        context=trace.set_span_in_context(record_span, Context()),
                        start_time=started,
                        links=[link],
                        attributes=attributes,
                    )
                    if failed is not None:
                        mirror.set_status(Status(StatusCode.ERROR, type(failed).__name__))
                    mirror.end(end_time=ended)


_current_batch: ContextVar[TracedBatch | None] = ContextVar("imgsim_traced_batch", default=None)


def _key_text(key: bytes | None) -> str | None:
    return None if key is None else key[:256].decode("utf-8", "replace")


@contextlib.contextmanager
def traced_batch(
    records: Sequence[Any], *, name: str | None = None, tracer: Tracer | None = None
) -> Iterator[TracedBatch]:
    """Spans for a batch of consumer records while the block runs.

    The batch span (current inside the block) links to the context every record carries;
    each record gets a CONSUMER span that continues its own trace (or starts one) and
    links back to the batch span.
    """
    tracer = _tracer(tracer)
    topic = records[0].topic if records else "kafka"
    received = [extract_context(r.headers) for r in records]
    links = []
    for record, ctx in zip(records, received, strict=True):
        span_context = trace.get_current_span(ctx).get_span_context()
        if span_context.is_valid:
            links.append(Link(span_context, {"messaging.kafka.message.offset": record.offset}))
    with tracer.start_as_current_span(
        name or f"{topic} batch",
        kind=SpanKind.CONSUMER,
        links=links,
        attributes={
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.batch.message_count": len(records),
        },
    ) as batch_span:
        batch = TracedBatch(tracer, batch_span)
        batch_link = Link(batch_span.get_span_context())
        for record, ctx in zip(records, received, strict=True):
            attributes: dict[str, str | int] = {
                "messaging.system": "kafka",
                "messaging.destination.name": record.topic,
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.message.offset": record.offset,
            }
            if (key := _key_text(record.key)) is not None:
                attributes["messaging.kafka.message.key"] = key
            span = tracer.start_span(
                f"{record.topic} process",
                context=ctx,
                kind=SpanKind.CONSUMER,
                links=[batch_link],
                attributes=attributes,
            )
            if not trace.get_current_span(ctx).get_span_context().is_valid:
                # A record without trace context starts a trace here; link the batch to it.
                batch_span.add_link(span.get_span_context())
            batch.record_spans[_record_id(record)] = span
        token = _current_batch.set(batch)
        try:
            yield batch
        except BaseException as exc:
            for span in batch.record_spans.values():
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            _current_batch.reset(token)
            for span in batch.record_spans.values():
                span.end()


@contextlib.contextmanager
def batch_step(name: str, **attributes: str | int | float | bool) -> Iterator[None]:
    """:meth:`TracedBatch.step` of the batch being handled; a plain span outside one."""
    batch = _current_batch.get()
    if batch is None:
        with _tracer().start_as_current_span(name, attributes=attributes):
            yield
        return
    with batch.step(name, **attributes):
        yield


@contextlib.contextmanager
def linked_span(
    name: str,
    origins: Sequence[SpanContext],
    *,
    tracer: Tracer | None = None,
    **attributes: str | int | float | bool,
) -> Iterator[Span]:
    """A span of work done for several callers at once (a forward pass for many rows).

    It links to each distinct caller's span; with a single caller it is also that span's
    child, so one request's trace shows the work done for it.
    """
    distinct = list({(c.trace_id, c.span_id): c for c in origins if c.is_valid}.values())
    parent = (
        trace.set_span_in_context(NonRecordingSpan(distinct[0]), Context())
        if len(distinct) == 1
        else Context()
    )
    with _tracer(tracer).start_as_current_span(
        name, context=parent, links=[Link(c) for c in distinct], attributes=attributes
    ) as span:
        yield span


class BatchTracingMiddleware(BaseMiddleware[Any, Any]):
    """Runs every batch handler inside :func:`traced_batch` of the records it got."""

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        records = msg.raw_message
        if not isinstance(records, tuple) or not records:
            return await call_next(msg)
        with traced_batch(records):
            return await call_next(msg)


def kafka_middlewares() -> tuple[Any, ...]:
    """Broker middlewares of a FastStream worker: continue incoming traces, inject into
    what it publishes (FastStream's own middleware), and batch spans with links."""
    return (KafkaTelemetryMiddleware(include_messages_counters=False), BatchTracingMiddleware)
