"""The Grafana dashboard and the Prometheus alert rules use only what the services export.

``infra/grafana/dashboards/imgsim.json`` and ``infra/prometheus/alerts.yml`` are read as
data. Every metric name in their PromQL must be a series some service exports: the set is
built from prometheus_client's registry after importing every module of ``libs`` and
``services`` that uses prometheus_client, with the suffixes the exposition adds
(``_total``, ``_bucket``/``_sum``/``_count``, ...). Label names in selectors and in
``by (...)`` must be labels of those metrics, and route values must be route templates of
the gateway. The dashboard must be well formed (unique panel ids, an expression in every
target, the ``${datasource}`` variable everywhere), each rule must have ``for``, a
severity and a summary and description, and the files must be wired: ``rule_files`` of
``prometheus.yml`` and the mounts of the compose ``prometheus`` and ``grafana`` services.
With ``promtool`` on PATH, the config and rules are also checked by it and the rules' unit
tests (``infra/prometheus/alerts_test.yml``) run.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase
from starlette.routing import Mount, Route

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "infra/grafana/dashboards/imgsim.json"
PROVISIONING = ROOT / "infra/grafana/provisioning"
PROMETHEUS_DIR = ROOT / "infra/prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts_test.yml"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEVERITIES = {"critical", "warning", "info"}
# Labels Prometheus attaches to every scraped series, and the series it writes itself.
TARGET_LABELS = frozenset({"job", "instance"})
SYNTHETIC = {"up": TARGET_LABELS}
# The series names of one metric family in the text exposition, by family type.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}
# What the brief of the dashboard asks for: each must be plotted.
REQUIRED_ON_DASHBOARD = {
    "imgsim_gateway_requests_total",  # images accepted by the gateway
    "imgsim_embedder_images_total",
    "imgsim_indexer_points_upserted_total",
    "imgsim_kafka_consumer_lag",
    "imgsim_embedder_batch_size_bucket",
    "imgsim_embedder_inference_seconds_bucket",
    "imgsim_gateway_request_duration_seconds_bucket",
    "imgsim_gateway_cache_hits_total",
    "imgsim_gateway_cache_misses_total",
}
REQUIRED_ALERTS = {"ConsumerLagGrowing", "DeadLetters", "SearchLatencyHigh", "TargetDown"}
SEARCH_ROUTE_PREFIX = "/api/v1/search"

# ---------------------------------------------------------------------------------------
# What the services export
# ---------------------------------------------------------------------------------------


def metric_modules() -> list[str]:
    """Every module of libs and services that uses prometheus_client."""
    found = []
    for src in sorted([*ROOT.glob("libs/*/src"), *ROOT.glob("services/*/src")]):
        for path in sorted(src.rglob("*.py")):
            if path.name == "__main__.py" or "prometheus_client" not in path.read_text():
                continue
            parts = path.relative_to(src).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


@cache
def exported() -> dict[str, frozenset[str]]:
    """Series name -> its label names, for every series the services can expose."""
    declared: dict[str, frozenset[str]] = {}
    for name in metric_modules():
        for value in vars(importlib.import_module(name)).values():
            if isinstance(value, MetricWrapperBase):
                for family in value.describe():
                    # A labelled metric has no samples until a child is used, so its
                    # label names come from the collector.
                    declared[family.name] = frozenset(value._labelnames)
    series: dict[str, frozenset[str]] = dict(SYNTHETIC)
    for family in REGISTRY.collect():
        labels = declared.get(family.name, frozenset()) | TARGET_LABELS
        for suffix in SUFFIXES[family.type]:
            series[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
        for sample in family.samples:
            series[sample.name] = series.get(sample.name, labels) | sample.labels.keys()
    return series


@cache
def gateway_routes() -> frozenset[str]:
    """The values of the gateway's ``route`` label, as its middleware records them: one
    request to every operation (nothing is connected, so most answer 500; the label does
    not depend on the status), plus the mounts and the unmatched label. Reading the route
    table instead misses how routers nest: a nested router's routes are labelled without
    the outer prefix."""
    from fastapi.testclient import TestClient

    from imgsim_gateway.app import create_app
    from imgsim_gateway.observability import REQUESTS, UNMATCHED
    from imgsim_gateway.settings import GatewaySettings

    app = create_app(GatewaySettings())  # no lifespan: nothing is connected
    client = TestClient(app, raise_server_exceptions=False)
    operations = [(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops]
    # and the app's own routes outside the schema (/metrics, the docs, the page)
    operations += [(m, r.path) for r in app.routes if isinstance(r, Route) for m in r.methods or ()]
    for method, path in operations:
        client.request(method, re.sub(r"\{[^}]+\}", "x", path))
    seen = {sample.labels["route"] for sample in next(iter(REQUESTS.collect())).samples}
    mounts = {r.path for r in app.routes if isinstance(r, Mount)}
    return frozenset(seen | mounts | {UNMATCHED})


# ---------------------------------------------------------------------------------------
# PromQL, as far as the checks need it
# ---------------------------------------------------------------------------------------

_SELECTOR = re.compile(r"(?<![\w:])([a-zA-Z_:][\w:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_RANGE = re.compile(r"\[[^\[\]]*\]")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(\s*\()?")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})
_TEMPLATE_LABEL = re.compile(r"\$labels\.(\w+)")


@dataclass(frozen=True)
class Matcher:
    metric: str | None
    label: str
    op: str
    value: str


@dataclass
class Query:
    metrics: set[str] = field(default_factory=set)
    matchers: list[Matcher] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)  # labels of by/without/on/ignoring/group_*

    def labels(self) -> set[str]:
        """Labels the query's metrics carry."""
        series = exported()
        return set().union(*(series.get(m, frozenset()) for m in self.metrics))


def parse(expr: str) -> Query:
    query = Query()
    for selector in _SELECTOR.finditer(expr):
        for m in _MATCHER.finditer(selector[2]):
            query.matchers.append(Matcher(selector[1], m[1], m[2], m[3]))
    text = _SELECTOR.sub(lambda s: f" {s[1] or ''} ", expr)
    text = _VARIABLE.sub("1", _RANGE.sub(" ", text))
    for grouping in _GROUPING.finditer(text):
        query.grouping |= {label.strip() for label in grouping[1].split(",") if label.strip()}
    text = _STRING.sub(" ", _GROUPING.sub(" ", text))
    query.metrics = {
        m[1] for m in _IDENT.finditer(text) if not m[2] and m[1] not in _KEYWORDS
    }  # an identifier before "(" is a function or an aggregation
    return query


def test_parse_finds_metrics_labels_and_matchers() -> None:
    query = parse(
        'histogram_quantile(0.99, sum by (route, le) (rate(a_bucket{route=~"/x(/y)?", m="P"}'
        "[$__rate_interval]))) / on(job) group_left(kind) b_total offset 5m > 1e3 and c"
    )
    assert query.metrics == {"a_bucket", "b_total", "c"}
    assert query.grouping == {"route", "le", "job", "kind"}
    assert query.matchers == [
        Matcher("a_bucket", "route", "=~", "/x(/y)?"),
        Matcher("a_bucket", "m", "=", "P"),
    ]


# ---------------------------------------------------------------------------------------
# The files
# ---------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return result


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))  # a collapsed row holds its panels


def dashboard_exprs() -> list[tuple[str, str]]:
    return [
        (f"panel {panel.get('title')!r} {target.get('refId')}", target.get("expr", ""))
        for panel in all_panels(dashboard()["panels"])
        for target in panel.get("targets", [])
    ]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def alert_exprs() -> list[tuple[str, str]]:
    return [(f"alert {rule.get('alert')}", rule.get("expr", "")) for rule in alert_rules()]


def scrape_jobs() -> frozenset[str]:
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    return frozenset(job["job_name"] for job in config["scrape_configs"])


def compose_services() -> dict[str, Any]:
    result: dict[str, Any] = load_yaml(ROOT / "compose.yaml")["services"]
    return result


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (host path relative to the root, read-only), for bind mounts."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *mode = str(volume).split(":")
        if source.startswith("./"):
            found[target] = (source.removeprefix("./").rstrip("/"), mode == ["ro"])
    return found


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The file of this repository a container path of a compose service resolves to."""
    path = PurePosixPath(container_path)
    for target, (source, _) in mounts(service).items():
        if path == PurePosixPath(target) or PurePosixPath(target) in path.parents:
            return ROOT / source / path.relative_to(target)
    raise AssertionError(f"{container_path} is not mounted from this repository")


EXPRS = dashboard_exprs() + alert_exprs()


# ---------------------------------------------------------------------------------------
# Metric names and labels
# ---------------------------------------------------------------------------------------


def test_the_exported_set_holds_the_services_metrics() -> None:
    """A sanity check of how the set is built: a metric of each kind from each service."""
    modules = set(metric_modules())
    assert {
        "imgsim_core.lag",
        "imgsim_gateway.observability",
        "imgsim_embedder.batcher",
        "imgsim_embedder.handlers",
        "imgsim_indexer.handlers",
        "imgsim_indexer.cache",
    } <= modules
    series = exported()
    assert series["imgsim_kafka_consumer_lag"] >= {"group", "topic", "partition"}
    assert series["imgsim_embedder_batch_size_bucket"] >= {"kind", "le"}
    assert series["imgsim_gateway_requests_total"] >= {"method", "route", "status"}
    assert "imgsim_indexer_points_upserted_total" in series
    assert "imgsim_gateway_cache_hits_total_total" not in series


@pytest.mark.parametrize(("where", "expr"), EXPRS, ids=[w for w, _ in EXPRS])
def test_expressions_use_only_exported_metrics_and_labels(where: str, expr: str) -> None:
    series = exported()
    query = parse(expr)
    assert query.metrics, f"{where}: no metric in {expr!r}"
    unknown = query.metrics - series.keys()
    assert not unknown, f"{where}: no service exports {sorted(unknown)}"
    for m in query.matchers:
        if m.metric is not None:
            assert m.label in series[m.metric], f"{where}: {m.metric} has no label {m.label}"
    missing = query.grouping - query.labels()
    assert not missing, f"{where}: no metric of {sorted(query.metrics)} has {sorted(missing)}"


@pytest.mark.parametrize(("where", "expr"), EXPRS, ids=[w for w, _ in EXPRS])
def test_route_and_job_values_exist(where: str, expr: str) -> None:
    """Gateway routes are templates (``/api/v1/images/{image_id:imageid}``); Prometheus
    regexes are anchored at both ends. Jobs are those of prometheus.yml."""
    known = {"route": gateway_routes(), "job": scrape_jobs()}
    for m in parse(expr).matchers:
        if m.label not in known or "$" in m.value:
            continue
        values = known[m.label]
        if m.op in ("=", "!="):
            assert m.value in values, f"{where}: no {m.label} {m.value!r} in {sorted(values)}"
        else:
            matched = {v for v in values if re.fullmatch(m.value, v)}
            assert matched, f"{where}: {m.label}=~{m.value!r} matches none of {sorted(values)}"


def test_search_latency_covers_every_search_route() -> None:
    search = {r for r in gateway_routes() if r.startswith(SEARCH_ROUTE_PREFIX)}
    assert search, "the gateway has no search route"
    latency = "imgsim_gateway_request_duration_seconds_bucket"
    used = [
        (where, m)
        for where, expr in EXPRS
        for m in parse(expr).matchers
        if m.metric == latency and m.label == "route"
    ]
    assert any(w.startswith("alert ") for w, _ in used), "no alert on search latency"
    assert any(w.startswith("panel ") for w, _ in used), "no panel of search latency"
    for where, m in used:
        assert m.op == "=~", where
        matched = {r for r in gateway_routes() if re.fullmatch(m.value, r)}
        assert matched == search, f"{where}: {m.value!r} matches {sorted(matched)}"


def test_every_dead_letter_counter_is_plotted_and_alerted() -> None:
    counters = {name for name in exported() if name.endswith("_deadletters_total")}
    assert counters, "no service exports a dead-letter counter"
    on_dashboard = set().union(*(parse(e).metrics for _, e in dashboard_exprs()))
    (rule,) = [r for r in alert_rules() if r["alert"] == "DeadLetters"]
    assert counters <= on_dashboard
    assert counters <= parse(rule["expr"]).metrics
    assert {"reason"} <= parse(rule["expr"]).grouping


# ---------------------------------------------------------------------------------------
# The dashboard
# ---------------------------------------------------------------------------------------


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"]
    assert board["title"]
    assert isinstance(board["schemaVersion"], int)
    panels = list(all_panels(board["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {sorted(ids)}"
    for panel in panels:
        title = panel.get("title")
        assert title, f"panel {panel['id']} has no title"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, title
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, title
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{title}: no unit"
        targets = panel["targets"]
        assert targets, f"{title}: no target"
        assert len({t["refId"] for t in targets}) == len(targets), f"{title}: refIds repeat"
        for target in targets:
            assert target.get("expr", "").strip(), f"{title} {target['refId']}: no expr"
            assert target.get("datasource", DATASOURCE) == DATASOURCE, title


def test_every_datasource_is_the_variable() -> None:
    board = dashboard()
    (variable,) = [v for v in board["templating"]["list"] if v["name"] == "datasource"]
    assert variable["type"] == "datasource"
    assert variable["query"] == "prometheus"

    def walk(node: Any, path: str) -> Iterator[tuple[str, Any]]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "datasource":
                    yield path, value
                yield from walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{path}[{i}]")

    refs = list(walk({k: v for k, v in board.items() if k != "templating"}, "dashboard"))
    assert refs
    for path, ref in refs:
        assert ref == DATASOURCE, f"{path}: {ref!r}"


def test_dashboard_plots_what_it_is_for() -> None:
    used = set().union(*(parse(expr).metrics for _, expr in dashboard_exprs()))
    assert used >= REQUIRED_ON_DASHBOARD, sorted(REQUIRED_ON_DASHBOARD - used)


# ---------------------------------------------------------------------------------------
# The alert rules
# ---------------------------------------------------------------------------------------


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    names = [rule.get("alert") for rule in rules]
    assert len(names) == len(set(names)), names
    assert set(names) >= REQUIRED_ALERTS
    for rule in rules:
        name = rule.get("alert")
        assert name, f"a rule without a name: {rule}"
        assert str(rule.get("expr", "")).strip(), name
        assert re.fullmatch(r"(\d+[smhdwy])+", str(rule.get("for", ""))), f"{name}: for"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity"
        annotations = rule.get("annotations", {})
        for key in ("summary", "description"):
            assert str(annotations.get(key, "")).strip(), f"{name}: no {key}"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: str(rule.get("alert")))
def test_annotations_name_labels_the_alert_has(rule: dict[str, Any]) -> None:
    query = parse(rule["expr"])
    # An aggregation keeps only its by-labels; a plain selector keeps the metric's own.
    available = query.grouping or query.labels()
    for key, text in rule["annotations"].items():
        used = set(_TEMPLATE_LABEL.findall(text))
        assert used <= available, f"{rule['alert']} {key}: {sorted(used - available)}"


def test_target_down_covers_every_imgsim_job() -> None:
    jobs = scrape_jobs() - {"prometheus"}
    (rule,) = [r for r in alert_rules() if r["alert"] == "TargetDown"]
    query = parse(rule["expr"])
    assert query.metrics == {"up"}
    for m in query.matchers:
        if m.label == "job":
            assert m.op == "=~"
            assert all(re.fullmatch(m.value, job) for job in jobs), (m.value, jobs)


# ---------------------------------------------------------------------------------------
# Wiring: prometheus.yml, compose and Grafana's provisioning
# ---------------------------------------------------------------------------------------


def test_prometheus_loads_the_rules_compose_mounts() -> None:
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    prometheus = compose_services()["prometheus"]
    flags = dict(arg.split("=", 1) for arg in prometheus["command"] if "=" in arg)
    config_dir = PurePosixPath(flags["--config.file"]).parent
    assert host_path(prometheus, flags["--config.file"]) == PROMETHEUS_DIR / "prometheus.yml"
    loaded = []
    for entry in config["rule_files"]:
        assert (PROMETHEUS_DIR / entry).is_file(), f"rule file {entry} missing"
        loaded.append(host_path(prometheus, str(config_dir / entry)))
    assert ALERTS in loaded
    assert all(read_only for _, read_only in mounts(prometheus).values())


def test_grafana_is_provisioned_from_this_repository() -> None:
    services = compose_services()
    grafana = services["grafana"]
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", grafana["image"]), grafana["image"]
    assert "prometheus" in grafana["depends_on"]
    assert "3000:3000" in grafana["ports"]
    env = {k: str(v) for k, v in grafana["environment"].items()}
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert host_path(grafana, env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]) == DASHBOARD
    assert all(read_only for _, read_only in mounts(grafana).values())

    assert host_path(grafana, "/etc/grafana/provisioning") == PROVISIONING
    providers = load_yaml(PROVISIONING / "dashboards/imgsim.yaml")["providers"]
    folders = {host_path(grafana, p["options"]["path"]) for p in providers if p["type"] == "file"}
    assert DASHBOARD.parent in folders

    (source,) = load_yaml(PROVISIONING / "datasources/prometheus.yaml")["datasources"]
    assert source["type"] == "prometheus"
    url = re.fullmatch(r"http://([\w-]+):(\d+)", source["url"])
    assert url, source["url"]
    host, port = url.groups()
    assert any(str(p).endswith(f":{port}") for p in services[host]["ports"]), source["url"]
    (variable,) = [v for v in dashboard()["templating"]["list"] if v["name"] == "datasource"]
    assert variable["current"]["value"] == source["uid"]
    scrape = load_yaml(PROMETHEUS_DIR / "prometheus.yml")["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape  # what $__rate_interval builds on


def test_promtool_accepts_the_config_and_the_rules_pass_their_tests() -> None:
    if shutil.which("promtool") is None:
        pytest.fail("no promtool: `make bootstrap` installs it (from Debian's prometheus)")
    for args in (["check", "config", "prometheus.yml"], ["test", "rules", ALERT_TESTS.name]):
        done = subprocess.run(
            ["promtool", *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
