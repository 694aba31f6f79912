"""One trace per flow across the three services, exported over real OTLP/HTTP.

The test runs its own OTLP receiver (``POST /v1/traces``, protobuf bodies) on 127.0.0.1,
starts the services as processes exporting to it, and sends each HTTP request with a
``traceparent`` of its own, so it knows which trace to look for.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from imgsim_devstack.otlp import OtlpReceiver
from imgsim_devstack.processes import ServiceProcess, free_port
from imgsim_devstack.stack import StackConfig, start_services
from imgsim_embedder.testimages import distinct_image
from tests.conftest import Services

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]


@dataclass
class TracedStack:
    url: str
    prefix: str
    receiver: OtlpReceiver
    services: list[ServiceProcess]


@pytest.fixture(scope="module")
def traced(infra: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedStack]:
    prefix = f"tr{uuid.uuid4().hex[:8]}."
    with OtlpReceiver() as receiver:
        config = StackConfig(
            data_dir=Path(tmp_path_factory.mktemp("tracing")),
            gateway_port=free_port(),
            topic_prefix=prefix,
            partitions=3,
            extra_env=receiver.env(),
        )
        services: list[ServiceProcess] = start_services(config, infra.bootstrap, infra.redis_url)
        try:
            url = f"http://127.0.0.1:{config.gateway_port}"
            yield TracedStack(url, prefix, receiver, services)
        finally:
            for service in reversed(services):
                service.stop()


def traceparent() -> tuple[str, dict[str, str]]:
    """A fresh trace id and the header that makes the gateway continue it."""
    trace_id = uuid.uuid4().hex
    return trace_id, {"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_one_index_request_is_one_trace(traced: TracedStack) -> None:
    image_id = f"traced-{uuid.uuid4().hex[:6]}"
    trace_id, headers = traceparent()
    async with httpx.AsyncClient(base_url=traced.url, timeout=60) as client:
        response = await client.post(
            "/api/v1/index",
            json={"image_data": b64(distinct_image(3)[0]), "image_id": image_id},
            headers=headers,
        )
        assert response.status_code == 202, response.text
        deadline = time.monotonic() + 120
        while (await client.get(f"/api/v1/images/{image_id}")).status_code != 200:
            assert time.monotonic() < deadline, "the image never became visible"
            await asyncio.sleep(0.5)

    p = traced.prefix
    spans = await traced.receiver.wait_for(
        trace_id,
        {
            ("imgsim-gateway", "/api/v1/index"),
            ("imgsim-embedder", f"{p}images process"),
            ("imgsim-embedder", "embed images"),
            ("imgsim-indexer", f"{p}vectors process"),
            ("imgsim-indexer", "store write"),
        },
    )
    by_id = {s.span_id: s for s in spans}
    # The indexer's record span is the child of the embedder's span of the same image.
    (indexed,) = [s for s in spans if s.name == f"{p}vectors process"]
    assert by_id[indexed.parent_id].name == f"{p}images process"
    assert by_id[indexed.parent_id].service == "imgsim-embedder"


async def test_one_search_is_one_trace(traced: TracedStack) -> None:
    trace_id, headers = traceparent()
    async with httpx.AsyncClient(base_url=traced.url, timeout=60) as client:
        response = await client.post(
            "/api/v1/search",
            json={"image_data": b64(distinct_image(7)[0]), "top_k": 3},
            headers=headers,
        )
        assert response.status_code == 200, response.text

    p = traced.prefix
    spans = await traced.receiver.wait_for(
        trace_id,
        {
            ("imgsim-gateway", "/api/v1/search"),
            ("imgsim-gateway", f"{p}queries request"),
            ("imgsim-embedder", f"{p}queries process"),
            ("imgsim-embedder", "preprocess image"),
            ("imgsim-embedder", "forward pass"),
            ("imgsim-indexer", f"{p}searches process"),
            ("imgsim-indexer", "store search"),
        },
    )
    # Redis (the caches) is traced inside the same request.
    redis = [
        s
        for s in spans
        if "redis" in (s.attributes.get("db.system", ""), s.attributes.get("db.system.name", ""))
    ]
    assert redis, sorted({s.name for s in spans})
    assert {s.service for s in redis} == {"imgsim-gateway"}


def test_every_log_line_is_json_naming_its_service(traced: TracedStack) -> None:
    """After the flows above: FastStream's per-message lines go through the JSON handler
    at DEBUG, not through a handler of its own as colored text at INFO."""
    for service in traced.services:
        lines = [line for line in service.log_of_this_run().splitlines() if line.strip()]
        assert lines, service.name
        for line in lines:
            record = json.loads(line)  # fails on any line that is not JSON
            assert record["service"] == f"imgsim-{service.name}", line
            assert not record["message"].endswith(("Received", "Processed")), line
