"""The deployment files agree with the services' settings and with each other.

``compose.yaml``, the Kubernetes manifests (``infra/k8s``, base and GPU overlay), the
Dockerfile's targets and the Prometheus scrape config are read as data and checked against what
each service needs to reach its dependencies, derived from its settings class: a service
with a ``redis`` group needs a Redis URL, the indexer a Qdrant URL, every service Kafka and
an OTLP endpoint, a worker its metrics port, bound where Prometheus can reach it. Ports
must be the same number everywhere, and the versions of Kafka and Qdrant must agree
between compose, the local broker's jars and the test containers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from imgsim_embedder.settings import EmbedderSettings
from imgsim_gateway.settings import GatewaySettings
from imgsim_indexer.settings import IndexerSettings

ROOT = Path(__file__).resolve().parents[1]
SETTINGS: dict[str, tuple[str, type[Any]]] = {
    "gateway": ("GATEWAY", GatewaySettings),
    "embedder": ("EMBEDDER", EmbedderSettings),
    "indexer": ("INDEXER", IndexerSettings),
}
# The compose services and Kubernetes Deployments of each imgsim service.
COMPOSE = {
    "gateway": "gateway",
    "embedder": "embedder",
    "embedder-gpu": "embedder",
    "indexer": "indexer",
}


def needs(service: str) -> set[str]:
    """The variables a service needs in a deployment where nothing is on localhost."""
    prefix, settings = SETTINGS[service]
    fields = settings.model_fields
    wanted = {
        f"{prefix}_KAFKA__BOOTSTRAP_SERVERS",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_SERVICE_NAME",
    }
    if "redis" in fields:
        wanted.add(f"{prefix}_REDIS__URL")
    if "qdrant" in fields:
        wanted.add(f"{prefix}_QDRANT__URL")
    if "metrics_port" in fields:  # the workers: metrics on their own port, off by default
        wanted |= {f"{prefix}_METRICS_PORT", f"{prefix}_METRICS_HOST"}
    else:
        wanted |= {f"{prefix}_HOST", f"{prefix}_PORT"}
    return wanted


def port_variable(service: str) -> str:
    prefix, settings = SETTINGS[service]
    return f"{prefix}_METRICS_PORT" if "metrics_port" in settings.model_fields else f"{prefix}_PORT"


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def dockerfile_stages() -> dict[str, str]:
    """The root Dockerfile's stages by name (``FROM ... AS name``), each with its text."""
    text = (ROOT / "Dockerfile").read_text()
    stages: dict[str, str] = {}
    for stage in re.split(r"^(?=FROM )", text, flags=re.MULTILINE)[1:]:
        name = re.match(r"FROM \S+ AS (\S+)\n", stage)
        assert name is not None, f"a Dockerfile stage has no name: {stage.splitlines()[0]}"
        stages[name.group(1)] = stage
    return stages


def dockerfile(service: str) -> str:
    """The stage that is ``service``'s image (``--target service``)."""
    return dockerfile_stages()[service]


def exposed(service: str) -> int:
    found = re.findall(r"^EXPOSE (\d+)", dockerfile(service), re.MULTILINE)
    assert len(found) == 1, f"{service}'s Dockerfile exposes {found}"
    return int(found[0])


def scrape_targets() -> dict[str, int]:
    config = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    targets: dict[str, int] = {}
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets[host] = int(port)
    return targets


# ----------------------------------------------------------------------------- compose


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load((ROOT / "compose.yaml").read_text())[
        "services"
    ]
    return services


def host_of(address: str) -> str:
    """``kafka:9092``, ``redis://:pw@redis:6379/0``, ``http://jaeger:4318`` → the host."""
    return address.split("://")[-1].split("@")[-1].split(":")[0].split("/")[0]


@pytest.mark.parametrize("name", sorted(COMPOSE))
def test_compose_sets_what_each_service_needs(name: str) -> None:
    services = compose_services()
    env = {k: str(v) for k, v in services[name]["environment"].items()}
    missing = needs(COMPOSE[name]) - env.keys()
    assert not missing, f"compose service {name} lacks {sorted(missing)}"
    for key, value in env.items():
        if key.endswith("_HOST"):
            assert value == "0.0.0.0", f"{name}: {key}={value} is unreachable from the network"
        if key.endswith(("__BOOTSTRAP_SERVERS", "__URL", "OTEL_EXPORTER_OTLP_ENDPOINT")):
            assert host_of(value) in services, f"{name}: {key}={value} is not a compose service"


@pytest.mark.parametrize("name", sorted(COMPOSE))
def test_compose_ports_match_the_dockerfile_and_prometheus(name: str) -> None:
    service = COMPOSE[name]
    spec = compose_services()[name]
    port = int(spec["environment"][port_variable(service)])
    assert port == exposed(service), f"{name} listens on {port}, its Dockerfile exposes another"
    published = [int(str(p).split(":")[-1]) for p in spec.get("ports", [])]
    assert port in [*map(int, spec.get("expose", [])), *published], f"{name} does not expose {port}"
    assert scrape_targets()[service] == port, f"Prometheus scrapes {service} elsewhere"


@pytest.mark.parametrize("name", sorted(COMPOSE))
def test_compose_builds_each_service_from_its_own_target(name: str) -> None:
    service = COMPOSE[name]
    build = compose_services()[name]["build"]
    assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    assert build["context"] == "."
    assert build["target"] == service, f"{name} builds the {build['target']} image"
    assert build["args"]["SERVICE"] == service, f"{name}'s venv would be another service's"


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_each_target_is_built_on_the_shared_runtime_and_checks_its_venv(service: str) -> None:
    stage = dockerfile(service)
    assert stage.startswith(f"FROM runtime AS {service}\n"), stage.splitlines()[0]
    assert f"test -x /app/.venv/bin/imgsim-{service}" in stage
    entrypoint = re.findall(r"^ENTRYPOINT (.+)$", stage, re.MULTILINE)
    assert entrypoint == [f'["imgsim-{service}"]'], entrypoint


# ----------------------------------------------------------------------------- kubernetes


def deployment(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)


def k8s_documents(overlay: str) -> list[dict[str, Any]]:
    """The manifests ``kubectl kustomize infra/k8s[/gpu]`` renders, as far as imgsim uses
    kustomize: the base's resources, with the GPU overlay's strategic-merge patch applied
    to the embedder's container."""
    base = ROOT / "infra/k8s/base"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    docs = [d for resource in kustomization["resources"] for d in load_all(base / resource)]
    if overlay == "gpu":
        patch = yaml.safe_load((ROOT / "infra/k8s/gpu/embedder-gpu.yaml").read_text())
        container = deployment(docs, "embedder")["spec"]["template"]["spec"]["containers"][0]
        patched = patch["spec"]["template"]["spec"]["containers"][0]
        by_name = {e["name"]: e for e in container.get("env", [])}
        by_name.update({e["name"]: e for e in patched.get("env", [])})
        container["env"] = list(by_name.values())
    return docs


def secret_keys() -> dict[str, set[str]]:
    return {
        d["metadata"]["name"]: set(d.get("stringData", {}))
        for d in load_all(ROOT / "infra/k8s/secret.example.yaml")
    }


def container_env(docs: list[dict[str, Any]], spec: dict[str, Any]) -> dict[str, str]:
    config_maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    secrets = secret_keys()
    container = spec["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]])
        if "secretRef" in source:
            ref = source["secretRef"]
            assert ref["name"] in secrets, f"secret {ref['name']} is not in secret.example.yaml"
            env.update({key: "<secret>" for key in secrets[ref["name"]]})
    env.update({e["name"]: str(e.get("value", "<ref>")) for e in container.get("env", [])})
    return env


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_k8s_sets_what_each_service_needs(overlay: str, service: str) -> None:
    docs = k8s_documents(overlay)
    spec = deployment(docs, service)
    env = container_env(docs, spec)
    missing = needs(service) - env.keys()
    assert not missing, f"the {service} Deployment ({overlay}) lacks {sorted(missing)}"


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_k8s_ports_match_the_dockerfile_and_the_scrape_annotation(service: str) -> None:
    docs = k8s_documents("cpu")
    spec = deployment(docs, service)
    env = container_env(docs, spec)
    port = int(env[port_variable(service)])
    template = spec["spec"]["template"]
    container = template["spec"]["containers"][0]
    assert [p["containerPort"] for p in container["ports"]] == [port]
    assert int(template["metadata"]["annotations"]["prometheus.io/port"]) == port
    assert port == exposed(service)
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in container:  # an HTTP probe on the named port, or an exec on the number
            text = yaml.safe_dump(container[probe])
            assert str(port) in text or "port: http" in text, f"{service}'s {probe}: {text}"


# ----------------------------------------------------------------------------- versions


def test_kafka_and_qdrant_versions_agree() -> None:
    compose = compose_services()
    pom = (ROOT / "infra/kafka/pom.xml").read_text()
    conftest = (ROOT / "tests/conftest.py").read_text()
    local_kafka = re.search(r"<kafka.version>([\d.]+)</kafka.version>", pom)
    assert local_kafka is not None
    kafka = {
        "compose": compose["kafka"]["image"].split(":")[1],
        "local jars (infra/kafka/pom.xml)": local_kafka.group(1),
        "test containers": re.findall(r'"apache/kafka:([\d.]+)"', conftest)[0],
    }
    assert len(set(kafka.values())) == 1, f"Kafka versions differ: {kafka}"
    compose_qdrant = re.search(r"QDRANT_VERSION:-v([\d.]+)", compose["qdrant"]["image"])
    assert compose_qdrant is not None
    qdrant = {
        "compose": compose_qdrant.group(1),
        "test containers": re.findall(r'"qdrant/qdrant:v([\d.]+)"', conftest)[0],
    }
    assert len(set(qdrant.values())) == 1, f"Qdrant versions differ: {qdrant}"
