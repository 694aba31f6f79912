"""The gateway's /metrics: request count and latency by route template and status, and
the folder several worker processes keep their counters in."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from imgsim_gateway.__main__ import metrics_dir
from imgsim_gateway.app import create_app
from imgsim_gateway.settings import GatewaySettings


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_requests_are_counted_by_route_template() -> None:
    app = create_app(GatewaySettings())  # no lifespan: only routes that need no Kafka
    health = {"method": "GET", "route": "/api/v1/health", "status": "200"}
    unmatched = {"method": "GET", "route": "<unmatched>", "status": "404"}
    before = sample("imgsim_gateway_requests_total", **health)
    before_404 = sample("imgsim_gateway_requests_total", **unmatched)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        assert (await client.get("/api/v1/health")).status_code == 200
        assert (await client.get("/no/such/path/12345")).status_code == 404
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert sample("imgsim_gateway_requests_total", **health) == before + 1
    assert sample("imgsim_gateway_requests_total", **unmatched) == before_404 + 1
    assert sample("imgsim_gateway_request_duration_seconds_count", **health) >= 1
    text = response.text
    assert 'imgsim_gateway_requests_total{method="GET",route="/api/v1/health",status="200"}' in text
    assert "# TYPE imgsim_gateway_cache_hits_total counter" in text  # exported before any hit


async def test_every_route_is_labelled_with_its_whole_template() -> None:
    """Routes from every router keep the ``/api/v1`` prefix in their label (a nested router
    would drop it), and the scrape itself is ``/metrics``, not ``<unmatched>``."""
    app = create_app(GatewaySettings())
    scrape = {"method": "GET", "route": "/metrics", "status": "200"}
    before = sample("imgsim_gateway_requests_total", **scrape)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        await client.get("/metrics")
        # Nothing is connected: these fail, but they are still counted by their template.
        await client.post("/api/v1/search/text", json={"text": "a cat"})
        await client.get("/api/v1/images/cat-1")
        await client.get("/api/v1/stats")
    assert sample("imgsim_gateway_requests_total", **scrape) == before + 1
    routes = {
        s.labels["route"] for m in REGISTRY.collect() for s in m.samples if "route" in s.labels
    }
    assert {"/api/v1/search/text", "/api/v1/images/{image_id:imageid}", "/api/v1/stats"} <= routes
    assert not {"/search/text", "/images/{image_id:imageid}"} & routes


async def test_an_untraced_gateway_carries_the_clients_trace_context_on() -> None:
    """Without a tracer provider no spans are made, yet what a request produces must carry
    the client's ``traceparent``: the handler runs in that context."""
    from opentelemetry import trace
    from starlette.types import Receive, Scope, Send

    from imgsim_core.tracing import trace_headers
    from imgsim_gateway.observability import TraceContext

    seen: list[dict[str, bytes]] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(dict(trace_headers()))
        assert not trace.get_current_span().is_recording()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    transport = httpx.ASGITransport(app=TraceContext(handler))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        await client.get("/", headers={"traceparent": f"00-{trace_id}-{parent}-01"})
        await client.get("/")
    assert seen[0]["traceparent"] == f"00-{trace_id}-{parent}-01".encode()
    assert seen[1] == {}  # no header, no context: nothing made up


def test_the_workers_metrics_folder_made_for_them_is_removed_after(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with metrics_dir() as made:
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == made
        assert Path(made).parent == tmp_path
        (Path(made) / "counter_1.db").write_bytes(b"\0" * 16)  # what a worker writes
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    assert list(tmp_path.iterdir()) == []


def test_a_metrics_folder_the_environment_names_is_left_as_it_is(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "counter_1.db").write_bytes(b"\0" * 16)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with metrics_dir() as given:
        assert given == str(tmp_path)
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path)
    assert (tmp_path / "counter_1.db").exists()
