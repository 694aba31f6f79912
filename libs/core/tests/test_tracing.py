"""Trace context in Kafka headers, batch spans with links, exporter choice, log fields."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

from imgsim_core.kafka import OutRecord, dead_letter_record, header, produced_headers
from imgsim_core.telemetry import _TraceFilter
from imgsim_core.tracing import (
    _exporter,
    extract_context,
    linked_span,
    trace_headers,
    traced_batch,
)


@pytest.fixture
def spans() -> Iterator[tuple[Tracer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test"), exporter
    provider.shutdown()


def record(offset: int, headers: list[tuple[str, bytes]]) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="t.images",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=f"img-{offset}".encode(),
        value=b"x",
        checksum=None,
        serialized_key_size=6,
        serialized_value_size=1,
        headers=headers,
    )


def upstream_records(tracer: Tracer, n: int) -> tuple[list[Any], list[trace.SpanContext]]:
    """``n`` records, each produced inside its own trace, like the gateway's."""
    records, contexts = [], []
    for i in range(n):
        with tracer.start_as_current_span(f"request {i}") as span:
            records.append(record(i, produced_headers()))
            contexts.append(span.get_span_context())
    return records, contexts


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def test_headers_carry_the_current_trace(spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    tracer, _ = spans
    with tracer.start_as_current_span("produce") as span:
        headers = produced_headers(model_id="m")
    assert header(headers, "model-id") == b"m"
    received = trace.get_current_span(extract_context(headers)).get_span_context()
    assert received.trace_id == span.get_span_context().trace_id
    assert received.span_id == span.get_span_context().span_id
    # FastStream's parser hands header values over as text: both forms are read.
    text = [(k, v.decode()) for k, v in headers]
    assert trace.get_current_span(extract_context(text)).get_span_context() == received


def test_no_span_no_trace_headers() -> None:
    assert trace_headers() == []
    assert len(extract_context([("metadata", b"{}")])) == 0


def test_batch_span_links_to_every_message(spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = spans
    records, contexts = upstream_records(tracer, 3)
    bare = record(3, [])  # an upstream producer without trace context
    with traced_batch([*records, bare], tracer=tracer):
        pass

    (batch,) = named(exporter, "t.images batch")
    linked = {(link.context.trace_id, link.context.span_id) for link in batch.links}
    for context in contexts:
        assert (context.trace_id, context.span_id) in linked
    per_record = named(exporter, "t.images process")
    assert len(per_record) == 4
    for span, context in zip(per_record[:3], contexts, strict=True):
        # Each record's span continues that record's own trace and links back to the batch.
        assert span.context.trace_id == context.trace_id
        assert span.parent is not None
        assert span.parent.span_id == context.span_id
        assert [link.context.span_id for link in span.links] == [batch.context.span_id]
    # The record without context starts a new trace, which the batch links to too.
    new = per_record[3]
    assert new.parent is None
    assert new.context.trace_id not in {c.trace_id for c in contexts}
    assert (new.context.trace_id, new.context.span_id) in linked
    assert len(batch.links) == 4


def test_outputs_carry_their_own_inputs_trace(spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = spans
    records, contexts = upstream_records(tracer, 2)
    with traced_batch(records, tracer=tracer) as batch:
        with batch.step("store write"):
            pass
        outputs = [produced_headers(model_id="m", source=r) for r in records]
        dead = dead_letter_record("t.deadletter", records[1], "bad")
    per_record = named(exporter, "t.images process")
    for headers, context, span in zip(outputs, contexts, per_record, strict=True):
        produced = trace.get_current_span(extract_context(headers)).get_span_context()
        assert produced.trace_id == context.trace_id
        assert produced.span_id == span.context.span_id
    assert isinstance(dead, OutRecord)
    dead_context = trace.get_current_span(extract_context(dead.headers)).get_span_context()
    assert dead_context.trace_id == contexts[1].trace_id
    # The shared step appears in the batch's trace and in each record's trace.
    steps = named(exporter, "store write")
    assert {s.context.trace_id for s in steps} >= {c.trace_id for c in contexts}
    assert len(steps) == 3


def test_exporter_choice_from_the_standard_variables() -> None:
    assert _exporter({}) is None
    assert _exporter({"OTEL_TRACES_EXPORTER": "none"}) is None
    assert isinstance(_exporter({"OTEL_TRACES_EXPORTER": "console"}), ConsoleSpanExporter)
    http = _exporter({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert type(http).__module__.endswith("proto.http.trace_exporter")
    grpc = _exporter({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert type(grpc).__module__.endswith("proto.grpc.trace_exporter")
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER"):
        _exporter({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        _exporter({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_logs_carry_trace_and_span_ids(spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    from pythonjsonlogger.json import JsonFormatter

    tracer, _ = spans
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("%(message)s"))
    handler.addFilter(_TraceFilter())
    logger = logging.getLogger("imgsim.test.tracing")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("outside")
        with tracer.start_as_current_span("work") as span:
            logger.info("inside")
    finally:
        logger.removeHandler(handler)
    outside, inside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "trace_id" not in outside
    assert inside["trace_id"] == trace.format_trace_id(span.get_span_context().trace_id)
    assert inside["span_id"] == trace.format_span_id(span.get_span_context().span_id)


def test_work_for_many_callers_links_to_each(spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = spans
    origins = []
    for name in ("a", "b", "a"):
        with tracer.start_as_current_span(name) as span:
            origins.append(span.get_span_context())
    with linked_span("forward pass", origins, tracer=tracer):
        pass
    with linked_span("alone", origins[:1], tracer=tracer):
        pass
    (shared,) = named(exporter, "forward pass")
    assert shared.parent is None
    assert {link.context.span_id for link in shared.links} == {c.span_id for c in origins}
    (alone,) = named(exporter, "alone")
    assert alone.parent is not None
    assert alone.parent.span_id == origins[0].span_id
