"""Million-scale on the embedded store (``make bench-scale``): fill, build, search, restart.

    uv run python bench/scale.py                              # 1M, checkpoints 100k, 500k, 1M
    uv run python bench/scale.py --quantization int8
    uv run python bench/scale.py --points 50000 --steps 25000,50000 --queries 200   # quick
    uv run python bench/scale.py --qdrant-url http://127.0.0.1:6333       # a Qdrant server
    uv run python bench/scale.py --qdrant-container          # one from testcontainers (Docker)

One run, one process, against a stack it starts in a temporary folder: Kafka, Redis, the
indexer and the gateway (no embedder: the vectors are made here, so nothing but the store
path is measured). Nothing else should run on the machine.

1. N clustered CLIP-like vectors (:mod:`imgsim_devstack.vectors`: a keyword ``tag`` that
   1 % share and a number ``n``) are produced to the vectors topic in its contract, as a
   replay would, in steps. While they arrive and the indexer builds its index in the
   background, a paced loop (``--probe-rate`` searches/s through the indexer's searches
   topic, each with a deadline of ``--deadline-s``) records every search's latency and
   whether it failed, and a sampler reads the indexer's metrics and RSS (with its build
   child's).
2. At each step: the ingest rate (first record produced → all stored), the time until the
   index is built (no build running and fewer unindexed points than start one), then
   ``--queries`` held-out queries through the indexer (unfiltered and with the 1 % filter)
   with recall@10 against exact search (numpy), and the same number of uncached searches
   by id through the gateway (``/api/v1/search/similar``); RSS and disk.
3. After the last step: the indexer is stopped and started again (restart → a search
   answered), and stopped once more so that this process opens the same shard
   (``EdgeStore``: the reopen time) and times the store's own search.

Against a Qdrant server (``--qdrant-url``, or ``--qdrant-container``) the indexer writes
to a collection of this run's own and the output is the same, except what only the
embedded store has: a build is the time the collection is not green (the server's
optimizers), disk use and the in-process reopen are not measured, and RSS is the
indexer's alone (the server's memory is its own).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from imgsim_core.contracts import SearchReplied, VectorSearchRequested, pack_vector
from imgsim_core.kafka import ensure_topics, make_producer, now_ms
from imgsim_core.requestreply import Requester
from imgsim_core.settings import (
    EdgeBuildSettings,
    KafkaSettings,
    ModelSettings,
    QdrantSettings,
    VectorIndexSettings,
)
from imgsim_devstack.processes import KafkaBroker, RedisServer, ServiceProcess, free_port
from imgsim_devstack.stack import StackConfig, service_env
from imgsim_devstack.vectors import ClusteredVectors, embedded, exact_top, number, recall
from imgsim_indexer.edge_store import EdgeStore

DIM = 512
MODEL_ID = ModelSettings(weights="random").model_id  # the stack's indexer takes this model
QDRANT_IMAGE = "qdrant/qdrant:v1.19.1"  # the tests' server
PARTITIONER = DefaultPartitioner()
FILTER = {"tag": "t7"}  # 1 % of the points: those with i % 100 == 7
BUILDS = re.compile(r'^imgsim_indexer_index_builds_total\{outcome="(\w+)"\} (\S+)', re.M)
BUILD_SECONDS = re.compile(r"^imgsim_indexer_index_build_seconds_sum (\S+)", re.M)
Floats = npt.NDArray[np.float32]


def index_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The index settings a run sets; the rest are the indexer's defaults."""
    chosen = {"search_ef": args.search_ef, "oversampling": args.oversampling,
              "max_segment_size_kb": args.max_segment_kb}  # fmt: skip
    overrides: dict[str, object] = {name: value for name, value in chosen.items() if value}
    if args.in_ram:
        overrides["on_disk"] = False
    return overrides


def percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    ms = np.asarray(seconds) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


def proc_kb(pid: int, field_name: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def du_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


@dataclass
class Samples:
    """What the sampler and the probe loop saw: (time, value) pairs."""

    building: list[tuple[float, bool]] = field(default_factory=list)
    unindexed: list[tuple[float, float]] = field(default_factory=list)
    # indexer + build child: VmRSS, and RssAnon (what the page cache cannot take back)
    rss_mb: list[tuple[float, float, float]] = field(default_factory=list)
    probes: list[tuple[float, float, str]] = field(default_factory=list)  # t, s, outcome
    builds: dict[str, int] = field(default_factory=dict)  # outcome → count, the latest read

    def during_builds(self) -> tuple[list[float], list[str]]:
        """Latencies and outcomes of the probes sent while a build ran."""
        spans, start = [], None
        for t, on in self.building:
            if on and start is None:
                start = t
            elif not on and start is not None:
                spans.append((start, t))
                start = None
        if start is not None:
            spans.append((start, float("inf")))
        inside = [(s, o) for t, s, o in self.probes if any(a <= t <= b for a, b in spans)]
        return [s for s, _ in inside], [o for _, o in inside]


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.collection = f"scale{uuid.uuid4().hex[:8]}"  # on a server: this run's own
        config = StackConfig(data_dir=work, kafka_port=free_port(), redis_port=free_port(),
                             gateway_port=free_port(), extra_env=self.index_env())  # fmt: skip
        self.config = config
        self.kafka = KafkaBroker("kafka", work / "logs/kafka.log", data_dir=work / "kafka",
                                 port=config.kafka_port)  # fmt: skip
        self.redis = RedisServer("redis", work / "logs/redis.log", data_dir=work / "redis",
                                 port=config.redis_port)  # fmt: skip
        self.settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{config.kafka_port}")
        self.samples = Samples()
        self.rows: list[dict[str, object]] = []
        self.indexer: ServiceProcess | None = None
        self.gateway: ServiceProcess | None = None

    def index_env(self) -> dict[str, str]:
        a = self.args
        env = {
            "INDEXER_QDRANT__INDEX__QUANTIZATION": a.quantization,
            "INDEXER_QDRANT__BUILD__MIN_POINTS": str(a.build_min_points),
            "INDEXER_PAYLOAD_INDEXES": json.dumps({"tag": "keyword", "n": "integer"}),
            "GATEWAY_RESULT_CACHE_TTL_S": "1",
        }
        for name, value in index_overrides(self.args).items():
            env[f"INDEXER_QDRANT__INDEX__{name.upper()}"] = str(value)
        if a.qdrant_url:
            env["INDEXER_QDRANT__URL"] = a.qdrant_url
            env["INDEXER_QDRANT__COLLECTION"] = self.collection
        return env

    # -- the stack ---------------------------------------------------------------------

    def service(self, name: str) -> ServiceProcess:
        env = service_env(self.config, self.settings.bootstrap_servers, self.redis.url)[name]
        port = env.get("INDEXER_METRICS_PORT")
        health = (f"http://127.0.0.1:{port}/healthz" if name == "indexer"
                  else f"http://127.0.0.1:{self.config.gateway_port}/api/v1/health")  # fmt: skip
        return ServiceProcess(name, self.work / f"logs/{name}.log", module=f"imgsim_{name}",
                              env=env, health_url=health)  # fmt: skip

    def start_indexer(self) -> float:
        self.indexer = self.service("indexer")
        started = time.perf_counter()
        self.indexer.spawn()
        self.indexer.wait_ready(600)
        return time.perf_counter() - started

    @property
    def metrics_url(self) -> str:
        assert self.indexer is not None
        return f"http://127.0.0.1:{self.indexer.env['INDEXER_METRICS_PORT']}/metrics"

    # -- loops -------------------------------------------------------------------------

    async def sample(self, http: httpx.AsyncClient) -> None:
        while True:
            now = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                if self.args.qdrant_url:
                    await self.sample_server(http, now)
                text = (await http.get(self.metrics_url, timeout=2)).text
                building = re.search(r"^imgsim_indexer_index_building (\S+)", text, re.M)
                unindexed = re.search(r"^imgsim_indexer_points_awaiting_build (\S+)", text, re.M)
                if building:
                    self.samples.building.append((now, float(building[1]) > 0))
                if unindexed:
                    self.samples.unindexed.append((now, float(unindexed[1])))
                builds = BUILDS.findall(text)
                if builds:
                    self.samples.builds = {o: int(float(n)) for o, n in builds}
                    took = BUILD_SECONDS.search(text)
                    self.samples.builds["seconds"] = round(float(took[1])) if took else 0
            if self.indexer is not None and self.indexer.pid is not None:
                pids = [self.indexer.pid, *children(self.indexer.pid)]
                rss = sum(proc_kb(p, "VmRSS") for p in pids) / 1024
                anon = sum(proc_kb(p, "RssAnon") for p in pids) / 1024
                self.samples.rss_mb.append((now, rss, anon))
            await asyncio.sleep(0.25)

    async def sample_server(self, http: httpx.AsyncClient, now: float) -> None:
        """A Qdrant server builds on its own: its collection is yellow (or grey) until its
        optimizers are done; the Edge gauges are absent."""
        url = self.args.qdrant_url.rstrip("/")
        aliases = (await http.get(f"{url}/collections/aliases", timeout=2)).json()["result"]
        real = next((a["collection_name"] for a in aliases["aliases"]
                     if a["alias_name"] == self.collection), None)  # fmt: skip
        if real is None:  # the indexer has not created it yet
            return
        info = (await http.get(f"{url}/collections/{real}", timeout=2)).json()["result"]
        self.samples.building.append((now, info["status"] != "green"))
        unindexed = (info["points_count"] or 0) - (info["indexed_vectors_count"] or 0)
        self.samples.unindexed.append((now, float(max(0, unindexed))))

    async def probe(self, requester: Requester, queries: Floats) -> None:
        i = 0
        while True:
            started = time.perf_counter()
            try:
                await self.search(requester, queries[i % len(queries)])
                outcome = "ok"
            except TimeoutError:
                outcome = "timeout"
            except RuntimeError:
                outcome = "error"
            self.samples.probes.append((started, time.perf_counter() - started, outcome))
            i += 1
            await asyncio.sleep(
                max(0.0, 1 / self.args.probe_rate - (time.perf_counter() - started))
            )

    async def search(
        self, requester: Requester, vector: Floats, filter: dict[str, str] | None = None
    ) -> list[str]:
        deadline_s = self.args.deadline_s
        request = VectorSearchRequested(
            vector=pack_vector(vector), top_k=10, include_metadata=False, filter=filter,
            model_id=MODEL_ID, deadline_ms=now_ms() + int(deadline_s * 1000),
        )  # fmt: skip
        raw = await requester.request(
            self.settings.topics.searches, request.model_dump_json().encode(), timeout_s=deadline_s
        )
        reply = SearchReplied.model_validate_json(raw)
        if reply.error:
            raise RuntimeError(reply.error)
        return [h.image_id for h in reply.hits]

    # -- phases ------------------------------------------------------------------------

    async def produce(self, producer: AIOKafkaProducer, records: list[tuple[bytes, bytes]]) -> None:
        """Send ``records`` (key, value) to the vectors topic in whole batches, each to its
        key's partition (what a keyed send does, without a future per record)."""
        topic = self.settings.topics.vectors
        partitions = sorted(await producer.partitions_for(topic))
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in partitions}
        for key, value in records:
            by_partition[PARTITIONER(key, partitions, partitions)].append((key, value))
        sent = []
        for partition, todo in by_partition.items():
            batch = producer.create_batch()
            for key, value in todo:
                while batch.append(key=key, value=value, timestamp=None) is None:
                    sent.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
            if batch.record_count():
                sent.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*sent)

    async def stored(self, http: httpx.AsyncClient) -> int:
        response = await http.get(f"http://127.0.0.1:{self.config.gateway_port}/api/v1/stats")
        return int(response.json()["indexed_images"]) if response.status_code == 200 else -1

    async def all_stored(self, http: httpx.AsyncClient, count: int) -> float:
        """Wait until the store holds ``count`` points; return when."""
        while (stored := await self.stored(http)) < count:
            self.check_alive(stored)
            await asyncio.sleep(0.25)
        return time.perf_counter()

    def check_alive(self, stored: int) -> None:
        for process in (self.indexer, self.gateway):
            if process is not None and not process.alive():
                raise RuntimeError(
                    f"{process.name} exited at {stored} points:\n{process.log_tail()}"
                )

    async def built(self, since: float) -> float:
        """Wait until a fresh reading after ``since`` says no build runs and fewer points
        than start a build wait; return when."""
        check_s = 5.0 + 0.5  # the indexer's build check interval, and one sample
        while True:
            fresh = [t for t, _ in self.samples.building if t > since + check_s]
            if fresh and not self.samples.building[-1][1]:
                unindexed = self.samples.unindexed[-1][1] if self.samples.unindexed else 0
                if unindexed < self.args.build_min_points:
                    return time.perf_counter()
            await asyncio.sleep(0.25)

    async def measure_step(
        self, count: int, vectors: Floats, queries: Floats, requester: Requester,
        http: httpx.AsyncClient,
    ) -> dict[str, object]:  # fmt: skip
        row: dict[str, object] = {"points": count}
        for name, filt in (("unfiltered", None), ("filter_1pct", FILTER)):
            only = None if filt is None else (np.arange(count) % 100 == 7)
            exact = exact_top(vectors[:count], queries, 10, only)
            found, took = [], []
            for q in queries:
                started = time.perf_counter()
                ids = await self.search(requester, q, filt)
                took.append(time.perf_counter() - started)
                found.append([number(i) for i in ids])
            row[f"indexer_{name}"] = percentiles(took)
            row[f"recall_{name}"] = recall(found, exact)
        rng = np.random.default_rng(count)
        took = []
        url = f"http://127.0.0.1:{self.config.gateway_port}/api/v1/search/similar"
        for i in rng.choice(count, size=len(queries), replace=False):
            started = time.perf_counter()
            response = await http.post(url, json={"image_id": f"img/{i}", "top_k": 10,
                                                  "include_metadata": False})  # fmt: skip
            response.raise_for_status()
            took.append(time.perf_counter() - started)
        row["gateway_by_id"] = percentiles(took)
        row["rss_mb"], row["anon_mb"] = (
            self.samples.rss_mb[-1][1:] if self.samples.rss_mb else (0, 0)
        )
        row["disk_mb"] = float("nan") if self.args.qdrant_url else du_mb(self.work / "qdrant-edge")
        return row

    async def run(self) -> dict[str, object]:
        a = self.args
        cv = ClusteredVectors(DIM, seed=a.seed)
        queries = cv.take(a.queries)  # held out: never stored
        vectors = cv.take(a.points)
        self.kafka.start()
        self.redis.start()
        self.settings = KafkaSettings(bootstrap_servers=self.kafka.bootstrap)
        await ensure_topics(self.settings)
        self.start_indexer()
        self.gateway = self.service("gateway")
        self.gateway.spawn()
        self.gateway.wait_ready(120)
        kafka = self.settings
        producer = make_producer(  # bulk: full batches
            kafka, linger_ms=kafka.bulk_linger_ms, batch_bytes=kafka.bulk_batch_bytes
        )
        await producer.start()
        asker = make_producer(self.settings, linger_ms=0)  # requests: sent at once
        await asker.start()
        replies = self.settings.topics.replies(uuid.uuid4().hex[:8])
        requester = Requester(asker, self.settings.bootstrap_servers, replies, fetch_max_wait_ms=5)
        await requester.start()
        async with httpx.AsyncClient(timeout=30) as http:
            sampler = asyncio.create_task(self.sample(http))
            first = 0
            result: dict[str, object] = {}
            try:
                for step in a.steps:
                    at = datetime.now(UTC)  # encoded before the clock starts, as in a topic
                    records = [embedded(i, vectors[i], model_id=MODEL_ID, at=at)
                               for i in range(first, step)]  # fmt: skip
                    started = time.perf_counter()
                    probe = asyncio.create_task(self.probe(requester, queries))
                    await self.produce(producer, records)
                    del records
                    produced_at = time.perf_counter()
                    stored_at = await self.all_stored(http, step)
                    built_at = await self.built(stored_at)
                    probe.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await probe
                    row = await self.measure_step(step, vectors, queries, requester, http)
                    row["ingest_per_s"] = (step - first) / (stored_at - started)
                    row["produce_per_s"] = (step - first) / (produced_at - started)
                    row["built_after_s"] = built_at - started
                    self.rows.append(row)
                    print(json.dumps(row), flush=True)
                    first = step
                builds = dict(self.samples.builds)  # the restarted indexer counts from 0
                result = await self.restart(requester, queries)
                result["builds"] = builds
            finally:
                sampler.cancel()
                await requester.stop()
                await asker.stop()
                await producer.stop()
        during, outcomes = self.samples.during_builds()
        result["during_builds"] = {
            **percentiles(during),
            "searches": len(during),
            "failed": sum(o != "ok" for o in outcomes),
        }
        result["all_probes_failed"] = sum(o != "ok" for _, _, o in self.samples.probes)
        result["rss_peak_mb"] = max((r for _, r, _ in self.samples.rss_mb), default=0.0)
        result["anon_peak_mb"] = max((a for *_, a in self.samples.rss_mb), default=0.0)
        return result

    async def restart(self, requester: Requester, queries: Floats) -> dict[str, object]:
        assert self.indexer is not None
        self.indexer.stop()
        started = time.perf_counter()
        self.start_indexer()
        await self.search(requester, queries[0])
        restart_s = time.perf_counter() - started
        self.indexer.stop()
        self.indexer = None
        if self.args.qdrant_url:  # the server keeps serving; there is no shard to open here
            nan = percentiles([])
            return {"restart_to_serving_s": restart_s, "reopen_s": float("nan"),
                    "store_first_pass": nan, "store_unfiltered": nan,
                    "store_filter_1pct": nan}  # fmt: skip
        # The store as the run's indexer had it: the same index and search settings.
        index = VectorIndexSettings(
            quantization=self.args.quantization, **index_overrides(self.args)
        )
        store = EdgeStore(
            QdrantSettings(
                path=self.work / "qdrant-edge", index=index, build=EdgeBuildSettings(enabled=False)
            ),
            DIM,
            payload_indexes={"tag": "keyword", "n": "integer"},
        )
        started = time.perf_counter()
        await store.open()
        reopen_s = time.perf_counter() - started
        result: dict[str, object] = {"restart_to_serving_s": restart_s, "reopen_s": reopen_s}
        # The first pass reads the graph and vectors in from disk or the page cache; a
        # store that serves is warm, so the figures are the next passes'.
        for name, filt in (("first_pass", None), ("unfiltered", None), ("filter_1pct", FILTER)):
            took = []
            for q in queries:
                t = time.perf_counter()
                await store.search(q, top_k=10, threshold=None, with_metadata=False, filter=filt)
                took.append(time.perf_counter() - t)
            result[f"store_{name}"] = percentiles(took)
        await store.close()
        return result

    def stop(self) -> None:
        for process in (self.gateway, self.indexer, self.redis, self.kafka):
            if process is not None:
                process.stop()


def markdown(
    args: argparse.Namespace, rows: list[dict[str, object]], result: dict[str, object]
) -> str:
    def ms(cell: object) -> str:
        d = cell if isinstance(cell, dict) else {}
        return f"{d.get('p50_ms', float('nan')):.1f} / {d.get('p99_ms', float('nan')):.1f}"

    lines = [
        f"scale: {platform.node()}, {platform.machine()}, {datetime.now(UTC):%Y-%m-%d}, "
        f"{'Qdrant server ' + args.qdrant_url if args.qdrant_url else 'Qdrant Edge'}, "
        f"quantization {args.quantization}, index settings {index_overrides(args) or 'defaults'}, "
        f"{args.queries} queries, probes {args.probe_rate}/s",
        "",
        "| points | ingest pts/s | built after s | indexer p50/p99 ms | 1 % filter p50/p99 ms "
        "| recall@10 | recall@10 1 % | gateway by id p50/p99 ms | RSS (anon) MB | disk MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['points']:,} | {r['ingest_per_s']:,.0f} | {r['built_after_s']:.0f} "
            f"| {ms(r['indexer_unfiltered'])} | {ms(r['indexer_filter_1pct'])} "
            f"| {r['recall_unfiltered']:.3f} | {r['recall_filter_1pct']:.3f} "
            f"| {ms(r['gateway_by_id'])} | {r['rss_mb']:,.0f} ({r['anon_mb']:,.0f}) "
            f"| {r['disk_mb']:,.0f} |"
        )
    d = result["during_builds"]
    assert isinstance(d, dict)
    lines += [
        "",
        f"- during builds (writes arriving): {d['searches']} searches, p50/p99/max "
        f"{d['p50_ms']:.1f} / {d['p99_ms']:.1f} / {d['max_ms']:.1f} ms, {d['failed']} failed; "
        f"failed probes in the whole run: {result['all_probes_failed']}; index builds by "
        f"outcome (and their seconds in all): {result['builds']}",
        f"- store search (in process, after a first pass of {ms(result['store_first_pass'])}) "
        f"p50/p99 ms: unfiltered {ms(result['store_unfiltered'])}, "
        f"1 % filter {ms(result['store_filter_1pct'])}",
        f"- restart to serving {result['restart_to_serving_s']:.1f} s; reopen in process "
        f"{result['reopen_s']:.1f} s; indexer RSS peak (with its build child) "
        f"{result['rss_peak_mb']:,.0f} MB (anonymous {result['anon_peak_mb']:,.0f} MB)",
    ]
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--steps", default="100000,500000,1000000", help="checkpoints, ascending")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--quantization", choices=["none", "int8"], default="none")
    parser.add_argument("--search-ef", type=int, default=0, help="0: the indexer's default")
    parser.add_argument("--oversampling", type=float, default=0, help="0: the indexer's default")
    parser.add_argument("--max-segment-kb", type=int, default=0, help="0: the indexer's default")
    parser.add_argument(
        "--in-ram", action="store_true", help="INDEXER_QDRANT__INDEX__ON_DISK=false"
    )
    parser.add_argument("--build-min-points", type=int, default=20_000)
    parser.add_argument("--probe-rate", type=float, default=20.0)
    parser.add_argument("--deadline-s", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--qdrant-url", help="a Qdrant server for the indexer (default: the embedded store)"
    )
    parser.add_argument(
        "--qdrant-container", action="store_true",
        help="start a Qdrant server with testcontainers (needs Docker) and use it",
    )  # fmt: skip
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.steps = [int(s) for s in args.steps.split(",") if int(s) <= args.points]
    if not args.steps or args.steps[-1] != args.points:
        args.steps.append(args.points)
    return args


async def bench(args: argparse.Namespace) -> tuple[list[dict[str, object]], dict[str, object]]:
    work = Path(tempfile.mkdtemp(prefix="imgsim-scale-"))
    with contextlib.ExitStack() as stack:
        if args.qdrant_container:
            from testcontainers.core.container import DockerContainer

            qdrant = stack.enter_context(DockerContainer(QDRANT_IMAGE).with_exposed_ports(6333))
            host, port = qdrant.get_container_host_ip(), qdrant.get_exposed_port(6333)
            args.qdrant_url = f"http://{host}:{port}"
        runner = Bench(args, work)
        try:
            result = await runner.run()
        finally:
            runner.stop()
            shutil.rmtree(work, ignore_errors=True)
    return runner.rows, result


def main() -> None:
    args = parse()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the stack on a kill too
    rows, result = asyncio.run(bench(args))
    table = markdown(args, rows, result)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "result": result}, indent=2))


if __name__ == "__main__":
    main()
