"""Every image and every Deployment checks what its service's health really means.

The workers' liveness is ``/healthz`` on their metrics port (their consumer loops run,
see :mod:`imgsim_core.liveness`), never ``/metrics``, which answers from its own thread
while the consumers may be dead; the gateway's liveness is ``/api/v1/health`` and its
readiness ``/api/v1/ready`` (Kafka only). The images carry a HEALTHCHECK each (read by
Docker and compose), the Deployments probe the same paths on the same ports, and compose
does not switch an image's healthcheck off.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.test_deploy_config import (
    COMPOSE,
    compose_services,
    dockerfile,
    exposed,
    k8s_documents,
    port_variable,
)

LIVENESS = {"gateway": "/api/v1/health", "embedder": "/healthz", "indexer": "/healthz"}


def healthcheck(service: str) -> str:
    found = re.findall(r"^HEALTHCHECK (.+?)\n(?=\S|\Z)", dockerfile(service), re.M | re.S)
    assert len(found) == 1, f"{service}'s Dockerfile has {len(found)} HEALTHCHECK instructions"
    return str(found[0])


@pytest.mark.parametrize("service", sorted(LIVENESS))
def test_each_image_checks_its_liveness_route_on_its_port(service: str) -> None:
    check = healthcheck(service)
    assert LIVENESS[service] in check, check
    assert "/metrics" not in check, "a metrics scrape says nothing about the consumers"
    # The port comes from the same variable the service listens on (default: EXPOSE).
    assert port_variable(service) in check, check
    default = re.search(rf"{port_variable(service)}=(\d+)", dockerfile(service))
    assert default is not None
    assert int(default.group(1)) == exposed(service)


def probes(service: str) -> dict[str, dict[str, Any]]:
    docs = k8s_documents("cpu")
    spec = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == service)
    container = spec["spec"]["template"]["spec"]["containers"][0]
    return {k: v for k, v in container.items() if k.endswith("Probe")}


@pytest.mark.parametrize("service", ["embedder", "indexer"])
def test_workers_are_probed_on_healthz(service: str) -> None:
    found = probes(service)
    assert {"startupProbe", "livenessProbe"} <= found.keys(), sorted(found)
    for name, probe in found.items():
        assert probe.get("httpGet") == {"path": "/healthz", "port": exposed(service)}, (name, probe)
    # A worker's startup (topic setup, model loading) may take minutes; liveness must not
    # restart it meanwhile: the startup probe allows at least two.
    startup = found["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_gateway_liveness_and_readiness_routes() -> None:
    found = probes("gateway")
    assert found["livenessProbe"]["httpGet"]["path"] == "/api/v1/health"
    assert found["readinessProbe"]["httpGet"]["path"] == "/api/v1/ready"


@pytest.mark.parametrize("name", sorted(COMPOSE))
def test_compose_keeps_the_images_healthchecks(name: str) -> None:
    spec = compose_services()[name]
    check = spec.get("healthcheck")
    if check is None:
        return  # the image's HEALTHCHECK applies
    assert not check.get("disable"), f"{name} switches its healthcheck off"
    assert LIVENESS[COMPOSE[name]] in yaml.safe_dump(check["test"]), check
