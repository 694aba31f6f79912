"""The Kubernetes manifests render, and every object is valid as the cluster would take it.

Each kustomization under ``infra/k8s`` (the entry point, the base, the GPU overlay and the
KEDA overlays; found by walking the tree, so a new overlay is checked too) is rendered
with kustomize: ``kubectl kustomize``, or a ``kustomize`` binary where kubectl is missing
(``infra/local/bootstrap.sh`` builds one from the Go module proxy). Every rendered object
is validated against the OpenAPI schema of its kind:

- built-in kinds with the JSON schemas that kubernetes-validate bundles, for Kubernetes
  ``KUBERNETES_VERSION``, in strict mode: a field the API does not know fails, as with
  ``kubectl apply``'s strict field validation;
- KEDA ``ScaledObject`` against the ``openAPIV3Schema`` of KEDA's own CRD
  (``tests/data``), closed the same way (an object with ``properties`` takes no other
  field), its ``metadata`` against the Kubernetes ``ObjectMeta`` schema, and the CRD's one
  CEL rule (min ≤ max replicas) by hand.

The ScaledObjects must also agree with the services: each Kafka trigger names a topic and
consumer group that a subscriber of the scaled service consumes (its FastStream router,
built with the Deployment's environment), with that subscriber's offset reset policy and
the ConfigMap's bootstrap servers; ``maxReplicaCount`` is the partition count; the scaled
Deployment sets no ``replicas`` of its own; and only an indexer with a Qdrant server is
scaled. Negative tests show that each check rejects what it should.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, cast

import jsonschema
import kubernetes_validate
import pytest
import yaml
from faststream.kafka import KafkaBroker

from imgsim_devstack.routers import consumer_args
from imgsim_embedder.handlers import StateHolder
from imgsim_embedder.handlers import build_router as embedder_router
from imgsim_embedder.settings import EmbedderSettings
from imgsim_indexer.handlers import IndexerState
from imgsim_indexer.handlers import build_router as indexer_router
from imgsim_indexer.serving import Collections
from imgsim_indexer.settings import IndexerSettings
from imgsim_indexer.store import VectorStore
from tests.test_deploy_config import container_env, deployment

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "infra/k8s"
# The Kubernetes release whose API the manifests must fit (kubernetes-validate bundles it).
KUBERNETES_VERSION = "1.33"
KEDA_SCHEMA = ROOT / "tests/data/keda-scaledobject-v2.21.1.schema.json"
# The overlays that must exist (the walk finds these and any other).
EXPECTED = {".", "base", "gpu", "keda", "gpu-keda", "qdrant-server-scaled"}
# Trigger metadata the KEDA Kafka scaler reads (pkg/scalers/kafka_scaler.go, v2.21.1): any
# other key is ignored by KEDA, so a misspelt `lagThreshold` would silently be 10.
KAFKA_TRIGGER_METADATA = frozenset(
    {
        "bootstrapServers",
        "bootstrapServersFromEnv",
        "consumerGroup",
        "consumerGroupFromEnv",
        "topic",
        "topicFromEnv",
        "partitionLimitation",
        "lagThreshold",
        "activationLagThreshold",
        "offsetResetPolicy",
        "allowIdleConsumers",
        "excludePersistentLag",
        "scaleToZeroOnInvalidOffset",
        "limitToPartitionsWithLag",
        "ensureEvenDistributionOfPartitions",
        "fullMetadata",
        "version",
        "tls",
        "unsafeSsl",
        "sasl",
        "saslTokenProvider",
        "awsRegion",
    }
)

Doc = dict[str, Any]


# ----------------------------------------------------------------------------- rendering


def kustomizations() -> list[str]:
    """Every directory under infra/k8s with a Kustomization (components are not rendered
    alone: the overlays that use them are)."""
    found = []
    for path in sorted(K8S.rglob("kustomization.yaml")):
        if yaml.safe_load(path.read_text()).get("kind", "Kustomization") == "Kustomization":
            found.append(path.parent.relative_to(K8S).as_posix())
    return found


def renderers() -> list[list[str]]:
    found = []
    if kubectl := shutil.which("kubectl"):
        found.append([kubectl, "kustomize"])
    if kustomize := shutil.which("kustomize"):
        found.append([kustomize, "build"])
    return found


@cache
def rendered(kustomization: str) -> tuple[Doc, ...]:
    """The objects ``kubectl kustomize infra/k8s/<kustomization>`` renders."""
    commands = renderers()
    if not commands:
        pytest.fail("rendering needs kubectl or kustomize: run infra/local/bootstrap.sh")
    failures = []
    for command in commands:
        done = subprocess.run(
            [*command, str(K8S / kustomization)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode == 0:
            return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)
        failures.append(f"{' '.join(command)}: {done.stderr.strip()}")
    pytest.fail(f"infra/k8s/{kustomization} does not render: {failures}")


def name_of(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


# ----------------------------------------------------------------------------- schemas


def close(schema: Any) -> Any:
    """The schema with every object that lists its ``properties`` closed to others, as the
    API server's strict field validation treats a CRD's structural schema (fields marked
    ``x-kubernetes-preserve-unknown-fields`` stay open)."""
    if isinstance(schema, list):
        return [close(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: close(value) for key, value in schema.items()}
    if (
        "properties" in closed
        and "additionalProperties" not in closed
        and not closed.get("x-kubernetes-preserve-unknown-fields")
    ):
        closed["additionalProperties"] = False
    return closed


@cache
def keda_validator() -> jsonschema.protocols.Validator:
    schema = close(json.loads(KEDA_SCHEMA.read_text()))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def keda_errors(doc: Doc) -> list[str]:
    """What KEDA's ScaledObject CRD (v1alpha1) rejects in the object."""
    if doc["apiVersion"] != "keda.sh/v1alpha1":
        return [f"{name_of(doc)}: apiVersion {doc['apiVersion']}, not keda.sh/v1alpha1"]
    errors = [
        f"{name_of(doc)}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in keda_validator().iter_errors(doc)
    ]
    # metadata is `type: object` in a CRD: the API server checks it as any ObjectMeta.
    shell = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata")}
    errors += kubernetes_errors(shell, label=f"{name_of(doc)} metadata")
    # The CRD's x-kubernetes-validations rule, which jsonschema cannot evaluate.
    spec = doc.get("spec", {})
    if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
        errors.append(f"{name_of(doc)}: minReplicaCount must be ≤ maxReplicaCount")
    return errors


def kubernetes_errors(doc: Doc, label: str = "") -> list[str]:
    """What the Kubernetes API (strict field validation) rejects in a built-in object."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(map(str, e.absolute_path)) or "<root>"
        return [f"{label or name_of(doc)}: {where}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"{label or name_of(doc)}: {e.message}"]
    return []


def errors_of(doc: Doc) -> list[str]:
    if doc["apiVersion"].split("/")[0] == "keda.sh":
        return keda_errors(doc)
    return kubernetes_errors(doc)


def test_every_overlay_is_found() -> None:
    missing = EXPECTED - set(kustomizations())
    assert not missing, f"kustomizations not found under infra/k8s: {sorted(missing)}"


@pytest.mark.parametrize("kustomization", kustomizations())
def test_every_rendered_object_fits_its_schema(kustomization: str) -> None:
    docs = rendered(kustomization)
    assert docs, f"infra/k8s/{kustomization} renders nothing"
    errors = [error for doc in docs for error in errors_of(doc)]
    assert not errors, "\n".join(errors)


def test_the_secret_template_fits_its_schema() -> None:
    docs = [d for d in yaml.safe_load_all((K8S / "secret.example.yaml").read_text()) if d]
    assert docs
    errors = [error for doc in docs for error in errors_of(doc)]
    assert not errors, "\n".join(errors)


def bogus(kustomization: str, kind: str) -> Iterator[tuple[str, Doc]]:
    """Copies of one rendered object of ``kind``, each broken in one way."""
    original = next(d for d in rendered(kustomization) if d["kind"] == kind)
    cases: dict[str, Any] = {
        "Deployment": {
            "unknown container field": ("spec.template.spec.containers.0.imagePullPolcy", "x"),
            "unknown spec field": ("spec.replica", 2),
            "wrong type": ("spec.revisionHistoryLimit", "five"),
        },
        "ScaledObject": {
            "unknown spec field": ("spec.maxReplicas", 6),
            "unknown trigger field": ("spec.triggers.0.metaData", {}),
            "metadata value not a string": ("spec.triggers.0.metadata.allowIdleConsumers", False),
            "unknown metadata field": ("metadata.label", {}),
            "min above max": ("spec.minReplicaCount", 7),
        },
    }[kind]
    for case, (path, value) in cases.items():
        doc = copy.deepcopy(original)
        *parents, leaf = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[leaf] = value
        yield case, doc


@pytest.mark.parametrize("kind", ["Deployment", "ScaledObject"])
def test_the_schema_checks_reject_broken_objects(kind: str) -> None:
    for case, doc in bogus("qdrant-server-scaled", kind):
        assert errors_of(doc), f"a {kind} with a {case} passed"


# ----------------------------------------------------------------------------- KEDA


def scaled_objects() -> list[tuple[str, Doc]]:
    return [
        (k, doc) for k in kustomizations() for doc in rendered(k) if doc["kind"] == "ScaledObject"
    ]


def test_the_keda_overlays_scale_the_workers() -> None:
    targets = {(k, doc["spec"]["scaleTargetRef"]["name"]) for k, doc in scaled_objects()}
    assert targets >= {
        ("keda", "embedder"),
        ("gpu-keda", "embedder"),
        ("qdrant-server-scaled", "embedder"),
        ("qdrant-server-scaled", "indexer"),
    }
    for k in (".", "base", "gpu"):  # without KEDA: nothing needs its CRDs
        assert not [d for d in rendered(k) if d["apiVersion"].startswith("keda.sh/")]


def subscribers(
    service: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, dict[tuple[str, str], str]]:
    """The service's settings as its pod gets them, and its consumers: (topic, group) →
    auto_offset_reset, from the FastStream router the service builds."""
    prefix = "EMBEDDER_" if service == "embedder" else "INDEXER_"
    for key in [k for k in os.environ if k.startswith(prefix)]:
        monkeypatch.delenv(key)  # only the pod's environment counts
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings: EmbedderSettings | IndexerSettings
    if service == "embedder":
        settings = EmbedderSettings()
        router = embedder_router(settings, StateHolder(), KafkaBroker())
    else:
        settings = IndexerSettings()
        router = indexer_router(
            settings, IndexerState(Collections(cast(VectorStore, None), settings))
        )
    consumers = {}
    for (topic, group), args in consumer_args(router).items():
        reset = args.get("auto_offset_reset")
        assert group, f"{topic} is consumed in no group"
        assert reset, f"no auto_offset_reset found for {topic}"
        consumers[(topic, group)] = str(reset)
    return settings, consumers


@pytest.mark.parametrize(
    ("kustomization", "target"),
    [
        ("keda", "embedder"),
        ("gpu-keda", "embedder"),
        ("qdrant-server-scaled", "embedder"),
        ("qdrant-server-scaled", "indexer"),
    ],
)
def test_scaled_objects_agree_with_the_services(
    kustomization: str, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = list(copy.deepcopy(rendered(kustomization)))
    (scaled,) = [
        d
        for d in docs
        if d["kind"] == "ScaledObject" and d["spec"]["scaleTargetRef"]["name"] == target
    ]
    spec = scaled["spec"]
    ref = spec["scaleTargetRef"]
    assert (ref.get("apiVersion"), ref.get("kind")) == ("apps/v1", "Deployment")
    workload = deployment(docs, target)
    assert "replicas" not in workload["spec"], f"{target}: KEDA owns replicas, the Deployment too"
    env = container_env(docs, workload)
    settings, consumers = subscribers(target, env, monkeypatch)
    kafka = settings.kafka
    # Partitions are the ceiling: a consumer group gives each partition to one member.
    assert spec["maxReplicaCount"] == kafka.partitions
    assert spec.get("minReplicaCount", 0) >= 1, f"{target}: searches need one warm replica"
    bulk = kafka.topics.images if target == "embedder" else kafka.topics.vectors
    topics = set()
    for trigger in spec["triggers"]:
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        unknown = set(meta) - KAFKA_TRIGGER_METADATA
        assert not unknown, f"{target}: KEDA's Kafka scaler ignores {sorted(unknown)}"
        pair = (meta["topic"], meta["consumerGroup"])
        assert pair in consumers, f"{target} consumes no {pair}; it consumes {sorted(consumers)}"
        assert meta["offsetResetPolicy"] == consumers[pair], f"{target} {pair}: offset reset"
        assert meta["bootstrapServers"] == kafka.bootstrap_servers
        assert meta["allowIdleConsumers"] == "false"
        assert int(meta["lagThreshold"]) > 0
        assert int(meta["activationLagThreshold"]) >= 0
        topics.add(meta["topic"])
    assert bulk in topics, f"{target} does not scale on the lag of {bulk}"


def test_only_an_indexer_with_a_qdrant_server_scales() -> None:
    for kustomization in kustomizations():
        docs = list(rendered(kustomization))
        indexer = deployment(docs, "indexer")
        scaled = any(
            d["kind"] == "ScaledObject" and d["spec"]["scaleTargetRef"]["name"] == "indexer"
            for d in docs
        )
        if scaled:
            env = container_env(docs, indexer)
            assert env.get("INDEXER_QDRANT__URL"), f"{kustomization}: embedded store, scaled"
        else:  # the base: one indexer, stopped before the next starts
            assert indexer["spec"]["replicas"] == 1, kustomization
            assert indexer["spec"]["strategy"]["type"] == "Recreate", kustomization


# ----------------------------------------------------------------------------- reindex Job


def reindex_job() -> Doc:
    (job,) = [
        d
        for d in yaml.safe_load_all((K8S / "qdrant-server-scaled/reindex-job.yaml").read_text())
        if d
    ]
    return dict(job)


def test_the_reindex_job_fits_its_schema_and_the_overlay() -> None:
    job = reindex_job()
    # generateName instead of a name: each `kubectl create -f` starts a new run.
    assert not kubernetes_errors({**job, "metadata": {**job["metadata"], "name": "x"}}, "Job")
    docs = {name_of(d): d for d in rendered("qdrant-server-scaled")}
    pod = job["spec"]["template"]["spec"]
    assert f"ServiceAccount/{pod['serviceAccountName']}" in docs
    (role,) = [d for d in docs.values() if d["kind"] == "Role"]
    granted = {(r["resources"][0], v) for r in role["rules"] for v in r["verbs"]}
    assert {("scaledobjects", "patch"), ("deployments", "get")} <= granted
    binding = next(d for d in docs.values() if d["kind"] == "RoleBinding")
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    # What its scripts name exists: the ScaledObject and Deployment, the gateway Service.
    scripts = yaml.safe_dump(job)
    assert "ScaledObject/indexer" in docs
    assert "Deployment/indexer" in docs
    service = docs["Service/gateway"]
    assert f"http://gateway:{service['spec']['ports'][0]['port']}/api/v1/admin/reindex" in scripts
    assert job["metadata"]["namespace"] == docs["Deployment/indexer"]["metadata"]["namespace"]
    # Step 2 runs in the gateway image, named as the base kustomization names it.
    images = yaml.safe_load((K8S / "base/kustomization.yaml").read_text())["images"]
    gateway = next(i for i in images if i["name"] == "imgsim-gateway")
    (reindex,) = [c for c in pod["initContainers"] if c["name"] == "reindex"]
    assert reindex["image"] == f"{gateway['newName']}:{gateway['newTag']}"
    compile(reindex["command"][2], "reindex-job.yaml", "exec")  # the script parses
    # The hold comes first and the release last.
    assert "paused-replicas=1" in yaml.safe_dump(pod["initContainers"][0])
    assert "paused-replicas-" in yaml.safe_dump(pod["containers"][0])
