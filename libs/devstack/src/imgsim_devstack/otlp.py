"""A minimal OTLP/HTTP trace receiver on 127.0.0.1, for the tests and the benchmark.

Services started with ``OTEL_TRACES_EXPORTER=otlp``, ``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf``
and ``OTEL_EXPORTER_OTLP_ENDPOINT`` set to :attr:`OtlpReceiver.endpoint` (see :meth:`env`)
export their spans here; the receiver keeps them in memory.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    attributes: dict[str, str]
    start_ns: int = 0
    end_ns: int = 0

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


class OtlpReceiver:
    """A minimal OTLP/HTTP trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                receiver.add(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, request: ExportTraceServiceRequest) -> None:
        found = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            service = attributes.get("service.name", "")
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        ReceivedSpan(
                            service,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            span.name,
                            {a.key: a.value.string_value for a in span.attributes},
                            span.start_time_unix_nano,
                            span.end_time_unix_nano,
                        )
                    )
        with self._lock:
            self.spans.extend(found)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    async def wait_for(
        self, trace_id: str, wanted: set[tuple[str, str]], timeout_s: float = 60
    ) -> list[ReceivedSpan]:
        """The trace's spans once it has a span of each (service, name suffix) wanted."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.trace(trace_id)
            have = {
                (service, suffix)
                for service, suffix in wanted
                for s in spans
                if s.service == service and s.name.endswith(suffix)
            }
            if have == wanted:
                return spans
            if time.monotonic() > deadline:
                seen = sorted({(s.service, s.name) for s in spans})
                raise AssertionError(f"missing {sorted(wanted - have)} in trace {trace_id}: {seen}")
            await asyncio.sleep(0.2)

    def env(self) -> dict[str, str]:
        """The environment that makes a service export its spans here."""
        return {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "NO_PROXY": os.environ.get("NO_PROXY", "") + ",127.0.0.1",
        }

    def __enter__(self) -> OtlpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
