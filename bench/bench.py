"""The whole performance story in one run (``make bench``): the bare model, the pipeline's
ceilings without it, and the running stack, side by side, with the targets as ratios.

    uv run python bench/bench.py                 # starts its own stack in a temp folder
    uv run python bench/bench.py --markdown out.md
    uv run python bench/bench.py --quantization int8   # the embedder's int8 towers

Phases, in this order, in one process (nothing else should run on the machine):

1. The model in the embedder's own settings (random weights, seed 0): img/s at batch 1,
   8 and the bulk batch from preprocessed tensors, and at the bulk batch from JPEG bytes
   (decode + preprocess on the embedder's preprocessing threads, then the forward pass);
   text queries/s at batch 1, 8 and the query batch.
2. Ceilings without the model: preprocessing per core (640×480 and 4000×3000 JPEGs) and
   the indexer's write path (plan and store write) into the embedded store.
3. A local stack (Kafka, Redis, gateway, embedder, indexer as processes) fed 640×480
   JPEGs: index end to end; uncached search at concurrency 1, 8, 32; cached search at 32
   (wrk when installed, else this process); search under saturating bulk indexing;
   time-to-searchable at half the measured index rate.
4. The services restarted with tracing to an in-process OTLP receiver: where one
   search's time goes, span by span.
5. Kafka request/reply with trivial responders (a search's two hops and its reply), then
   the embedder stopped: the gateway's accept rate (durable in Kafka) for ~100 KB JPEGs,
   with the CPU each accepted image costs the gateway and the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import torch
from faststream.kafka import KafkaBroker
from photos import photo

from imgsim_core.images import decode_rgb
from imgsim_core.kafka import ensure_topics, make_producer
from imgsim_core.requestreply import Requester
from imgsim_core.responders import Received, received
from imgsim_core.settings import ImageLimits, KafkaSettings, ModelSettings, QdrantSettings
from imgsim_core.telemetry import broker_logging
from imgsim_devstack.otlp import OtlpReceiver, ReceivedSpan
from imgsim_devstack.processes import free_port
from imgsim_devstack.stack import LocalStack, StackConfig
from imgsim_embedder.model import ClipEncoder, ImageEncoder, load_encoder
from imgsim_embedder.settings import EmbedderSettings

LIMITS = ImageLimits()


# ----------------------------------------------------------------------------- helpers


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def timed(fn: Callable[[], object], seconds: float, min_runs: int = 3) -> float:
    """Median seconds of one call of ``fn`` after a warm-up call."""
    fn()
    runs: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(runs) < min_runs or time.perf_counter() < deadline:
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


@dataclass
class Report:
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # section, what, result
    targets: list[tuple[str, str, bool]] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)

    def add(self, section: str, what: str, result: str) -> None:
        self.rows.append((section, what, result))
        print(f"[{section}] {what}: {result}", flush=True)

    def target(self, what: str, measured: str, ok: bool) -> None:
        self.targets.append((what, measured, ok))

    def markdown(self, header: str) -> str:
        lines = [header, "", "| phase | what | result |", "| --- | --- | --- |"]
        lines += [f"| {s} | {w} | {r} |" for s, w, r in self.rows]
        lines += ["", "| target | measured | holds |", "| --- | --- | --- |"]
        lines += [f"| {w} | {m} | {'yes' if ok else '**no**'} |" for w, m, ok in self.targets]
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- 1. model


def bench_model(report: Report, seconds: float, quantization: str) -> None:
    embedder = EmbedderSettings()
    settings = ModelSettings(weights="random", seed=0, quantization=quantization)
    encoder = load_encoder(settings)
    bulk = embedder.max_batch
    jpegs = [photo(i) for i in range(bulk)]
    tensors = [encoder.preprocess(decode_rgb(j, LIMITS)) for j in jpegs]
    section = f"model {_runtime(encoder)}"
    for batch in sorted({1, 8, 16, bulk}):
        x = torch.stack([tensors[i % len(tensors)] for i in range(batch)])
        took = timed(functools.partial(encoder.encode_images, x), seconds)
        report.values[f"model_b{batch}_s"] = took
        report.values[f"model_b{batch}_rate"] = batch / took
        report.add(
            section, f"tensors, batch {batch}", f"{batch / took:.1f} img/s ({took * 1e3:.1f} ms)"
        )
    for batch in sorted({1, 8, embedder.query_max_batch}):
        texts = [f"a photo of thing number {i}" for i in range(batch)]
        took = timed(functools.partial(encoder.encode_texts, texts), seconds)
        report.values[f"model_text_b{batch}_s"] = took
        report.add(
            section, f"text queries, batch {batch}", f"{batch / took:.1f}/s ({took * 1e3:.1f} ms)"
        )
    pool = ThreadPoolExecutor(embedder.preprocess_threads)

    def from_bytes() -> None:
        prepared = list(pool.map(functools.partial(prepare, encoder), jpegs))
        encoder.encode_images(torch.stack(prepared))

    took = timed(from_bytes, seconds)
    pool.shutdown()
    report.values["model_jpeg_rate"] = bulk / took
    report.add(
        section,
        f"640×480 JPEG bytes → vectors, batch {bulk}",
        f"{bulk / took:.1f} img/s ({took * 1e3:.0f} ms)",
    )


def _runtime(encoder: ImageEncoder) -> str:
    if isinstance(encoder, ClipEncoder):
        return f"torch {encoder.dtype}, {torch.get_num_threads()} threads".replace("torch.", "")
    return f"OpenVINO {getattr(encoder, 'precision', '')}, {os.cpu_count()} cores"


# ----------------------------------------------------------------------------- 2. ceilings


def prepare(encoder: ImageEncoder, data: bytes) -> torch.Tensor:
    return encoder.preprocess(decode_rgb(data, LIMITS))


def bench_preprocess(report: Report, seconds: float) -> None:
    encoder = ClipEncoder.load(ModelSettings(weights="random", seed=0, dtype="float32"))
    torch.set_num_threads(1)
    try:
        for width, height in ((640, 480), (4000, 3000)):
            data = photo(7, width, height)
            took = timed(functools.partial(prepare, encoder, data), seconds)
            report.add(
                "ceiling",
                f"preprocess {width}×{height} JPEG ({len(data) // 1024} KiB), one core",
                f"{1 / took:.0f} img/s ({took * 1e3:.1f} ms)",
            )
    finally:
        torch.set_num_threads(os.cpu_count() or 1)


async def bench_store(report: Report, points: int) -> None:
    """The indexer's whole write path without Kafka: vectors-topic records planned
    (decoded, checked) and written to the embedded store in batches of the indexer's
    ``vectors_max_records``, each batch durable (flushed) before the next."""
    from imgsim_devstack.vectors import ClusteredVectors
    from imgsim_indexer.app import open_store
    from imgsim_indexer.serving import Collections
    from imgsim_indexer.settings import IndexerSettings

    with tempfile.TemporaryDirectory() as folder:
        settings = IndexerSettings(qdrant=QdrantSettings(path=Path(folder)))
        batch = settings.vectors_max_records
        records = list(ClusteredVectors().records(0, points, model_id=settings.model.model_id))
        store = open_store(settings.qdrant, settings.dim, settings.payload_indexes)
        await store.open()
        collections = Collections(store, settings)
        started = time.perf_counter()
        for first in range(0, points, batch):
            plan = await collections.apply(records[first : first + batch])
            assert not plan.dead_letters, plan.dead_letters[:1]
        took = time.perf_counter() - started
        count = await store.count()
        await store.close()
    report.values["store_rate"] = points / took
    report.add(
        "ceiling",
        f"indexer plans and writes vectors records into the embedded store ({count} points, "
        f"batches of {batch})",
        f"{points / took:,.0f} points/s",
    )


# ----------------------------------------------------------------------------- 3. stack


class Gateway:
    """This benchmark's HTTP client: aiohttp, posting bodies serialised before the phase
    they are timed in. The client runs on the same two cores as the stack it measures, so
    what it costs is taken from the rates it reports. Posting a 124 KiB image as JSON to a
    trivial server at c=16, httpx took 2.7 ms of CPU a request and this client 0.2 ms
    (bench/RESULTS.md, 2026-12-07)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Gateway:
        self._session = aiohttp.ClientSession(
            self.base_url,
            # Below uvicorn's keep-alive (5 s): a connection the gateway closed while it
            # sat idle in the pool would fail the next POST written to it.
            connector=aiohttp.TCPConnector(keepalive_timeout=2),
            timeout=aiohttp.ClientTimeout(total=120),
            trust_env=False,
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use the client in `async with`"
        return self._session

    async def post(
        self,
        path: str,
        body: bytes,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """The JSON answer to a POST of ``body`` (JSON); an error unless it is a 2xx."""
        headers = {"content-type": "application/json", **(headers or {})}
        async with self.session.post(path, data=body, params=params, headers=headers) as answer:
            return await self._json(answer)

    async def get(self, path: str) -> Any:
        async with self.session.get(path) as answer:
            return await self._json(answer)

    @staticmethod
    async def _json(answer: aiohttp.ClientResponse) -> Any:
        if answer.status >= 300:
            detail = await answer.text()
            raise RuntimeError(f"{answer.method} {answer.url}: {answer.status} {detail}")
        return await answer.json()


def body(**fields: object) -> bytes:
    """A request's JSON body, made before it is sent."""
    return json.dumps(fields).encode()


async def indexed(client: Gateway) -> int:
    return int((await client.get("/api/v1/stats"))["indexed_images"])


async def wait_indexed(client: Gateway, count: int, timeout_s: float = 600) -> None:
    """Until ``count`` images are indexed. A /stats asks the indexer over Kafka and
    costs the stack 10–16 ms of CPU (20–27 ms before the gateway shared its read of
    Kafka): polled every 0.1 s it took 5–12 % of the two cores from the end-to-end rate
    it measures. It is asked at a quarter of the time left at the rate seen (at most
    every 0.5 s, at least every 0.05 s), so the end is still seen within ~50 ms."""
    deadline = time.monotonic() + timeout_s
    seen: tuple[int, float] | None = None
    while (done := await indexed(client)) < count:
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(f"fewer than {count} images indexed after {timeout_s} s")
        rate = (done - seen[0]) / (now - seen[1]) if seen is not None else 0.0
        if seen is None or done > seen[0]:
            seen = (done, now)
        await asyncio.sleep(0.1 if rate <= 0 else min(0.5, max(0.05, (count - done) / rate / 4)))


class Images:
    """Fresh, distinct image payloads (base64), each used once."""

    def __init__(self, salt: int) -> None:
        self._next = salt

    def take(self, count: int, **kw: int) -> list[str]:
        first, self._next = self._next, self._next + count
        return [b64(photo(first + i, **kw)) for i in range(count)]


async def run_limited(count: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> float:
    semaphore = asyncio.Semaphore(concurrency)

    async def limited(i: int) -> None:
        async with semaphore:
            await one(i)

    started = time.perf_counter()
    await asyncio.gather(*(limited(i) for i in range(count)))
    return time.perf_counter() - started


def index_bodies(payloads: list[str], tag: str) -> list[bytes]:
    """Index requests of base64 images, ids ``<tag>-<i>``."""
    return [body(image_data=data, image_id=f"{tag}-{i}") for i, data in enumerate(payloads)]


async def index_all(client: Gateway, payloads: list[str], concurrency: int, tag: str) -> float:
    bodies = index_bodies(payloads, tag)

    async def one(i: int) -> None:
        await client.post("/api/v1/index", bodies[i])

    return await run_limited(len(payloads), concurrency, one)


async def searches(
    client: Gateway,
    queries: list[str],
    concurrency: int,
    headers: Callable[[int], dict[str, str]] | None = None,
) -> tuple[list[float], float]:
    """Latencies (ms) and searches/s of one search per query (base64 images, or texts)."""
    latencies: list[float] = []
    requests = [
        ("/api/v1/search/text", body(query=query[len(TEXT) :], top_k=10))
        if query.startswith(TEXT)
        else ("/api/v1/search", body(image_data=query, top_k=10))
        for query in queries
    ]

    async def one(i: int) -> None:
        started = time.perf_counter()
        answer = await client.post(*requests[i], headers=headers(i) if headers else None)
        assert not answer["cached"], "a benchmark query was served from the cache"
        latencies.append((time.perf_counter() - started) * 1000)

    took = await run_limited(len(queries), concurrency, one)
    return latencies, len(queries) / took


WARM_UP = 200  # images indexed before the stack is measured
TEXT = "text:"  # marks a text query among the base64 images given to searches()


class CpuMeter:
    """CPU seconds each process of the stack (and this client) used over a phase: what
    one image or one search cost each, and how much of the machine the processes other
    than the embedder took from the model (the physical limit of a ratio to the bare
    model, which has every core to itself)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = {**pids, "client": os.getpid()}
        self._start: dict[str, float] = {}
        self._started = 0.0

    def _now(self) -> dict[str, float]:
        return {n: cpu_seconds(p, children=n != "client") for n, p in self.pids.items()}

    def __enter__(self) -> CpuMeter:
        self._start = self._now()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        now = self._now()
        self.used = {n: now[n] - self._start[n] for n in self.pids}
        self.seconds = time.perf_counter() - self._started

    def text(self, units: int, unit: str) -> str:
        each = ", ".join(f"{n} {s / units * 1000:.1f}" for n, s in self.used.items())
        return (
            f"CPU ms per {unit}: {each}; all but the embedder took {self.others_share():.0%} "
            f"of the cores; the cores allow at most {self.ceiling(units):.1f}/s at this cost"
        )

    def ceiling(self, units: int) -> float:
        """The rate at which every core would be busy at this CPU per unit: the physical
        limit of this machine with everything on it."""
        return (os.cpu_count() or 1) / (sum(self.used.values()) / units)

    def others_share(self) -> float:
        others = sum(s for n, s in self.used.items() if n != "embedder")
        return others / self.seconds / (os.cpu_count() or 1)


def latency_text(latencies: list[float], rate: float) -> str:
    return f"p50 {pct(latencies, 50):.0f} ms, p99 {pct(latencies, 99):.0f} ms, {rate:.1f}/s"


async def bench_stack(
    report: Report, client: Gateway, args: argparse.Namespace, pids: dict[str, int]
) -> None:
    images = Images(int(time.time()) % 1_000_000 * 1000)
    tag = uuid.uuid4().hex[:6]
    base = await indexed(client)
    # Warm-up: the broker's JIT compiles its hot paths over the first few hundred records
    # (its CPU per image fell from 9.7 to 4.7 ms between a first and a second run of 300).
    await index_all(client, images.take(WARM_UP), 16, f"{tag}-warm")
    base += WARM_UP
    await wait_indexed(client, base)
    await searches(client, images.take(16), 4)

    payloads = images.take(args.images)
    started = time.perf_counter()
    with CpuMeter(pids) as e2e_cpu:
        accepted_s = await index_all(client, payloads, 16, f"{tag}-e2e")
        await wait_indexed(client, base + args.images)
    e2e_s = time.perf_counter() - started
    base += args.images
    e2e_rate = args.images / e2e_s
    report.values["e2e_rate"] = e2e_rate
    report.add(
        "stack",
        f"index {args.images} 640×480 JPEGs over HTTP, c=16, accepted",
        f"{args.images / accepted_s:.0f} images/s",
    )
    report.add(
        "stack",
        "index end to end (accepted → searchable)",
        f"{e2e_rate:.1f} images/s ({e2e_s:.1f} s); {e2e_cpu.text(args.images, 'image')}",
    )
    report.values["e2e_others_share"] = e2e_cpu.others_share()
    report.values["e2e_ceiling"] = e2e_cpu.ceiling(args.images)

    for concurrency, count in ((1, args.searches), (8, 2 * args.searches), (32, 3 * args.searches)):
        queries = images.take(count)  # made first: a JPEG costs this client a few ms
        with CpuMeter(pids) as search_cpu:
            latencies, rate = await searches(client, queries, concurrency)
        report.values[f"search_c{concurrency}_p50"] = pct(latencies, 50)
        report.values[f"search_c{concurrency}_p99"] = pct(latencies, 99)
        report.values[f"search_c{concurrency}_rate"] = rate
        report.values[f"search_c{concurrency}_others_share"] = search_cpu.others_share()
        report.values[f"search_c{concurrency}_ceiling"] = search_cpu.ceiling(count)
        report.add(
            "stack",
            f"uncached search, concurrency {concurrency}",
            f"{latency_text(latencies, rate)}; {search_cpu.text(count, 'search')}",
        )

    texts = [f"{TEXT}a photo of {tag} number {i}" for i in range(2 * args.searches)]
    latencies, rate = await searches(client, texts, 8)
    report.add("stack", "uncached text search, concurrency 8", latency_text(latencies, rate))

    await bench_cached(report, client, images.take(1)[0])

    # Under bulk: images offered at twice the end-to-end rate keep the embedder saturated.
    stop = asyncio.Event()
    offered = 0

    async def bulk() -> None:
        nonlocal offered
        interval = 1 / (2 * e2e_rate)
        ready = images.take(50)  # made before: making a JPEG costs the client a few ms
        pending: set[asyncio.Task[Any]] = set()
        next_at = time.perf_counter()
        while not stop.is_set():
            request = body(image_data=ready[offered % 50], image_id=f"{tag}-bulk-{offered}")
            pending.add(asyncio.create_task(client.post("/api/v1/index", request)))
            offered += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            for task in [t for t in pending if t.done()]:
                pending.discard(task)
                task.result()  # a refused write fails the benchmark here
        await asyncio.gather(*pending)

    feeder = asyncio.create_task(bulk())
    await asyncio.sleep(3)  # a backlog forms
    loaded, rate = await searches(client, images.take(args.searches), 1)
    stop.set()
    await feeder
    report.values["search_bulk_p99"] = pct(loaded, 99)
    report.add(
        "stack",
        f"uncached search c=1 under bulk indexing ({offered} images offered "
        f"at {2 * e2e_rate:.0f}/s)",
        latency_text(loaded, rate),
    )
    base += offered
    drain = time.perf_counter()
    await wait_indexed(client, base)
    report.add(
        "stack", "bulk backlog drained after the searches", f"{time.perf_counter() - drain:.1f} s"
    )

    # Time to searchable at half the measured index rate (open loop, ?wait=true).
    rate = e2e_rate / 2
    count = max(20, int(rate * args.tts_seconds))
    bodies = index_bodies(images.take(count), f"{tag}-tts")
    visible: list[float] = []

    async def write(i: int) -> None:
        started = time.perf_counter()
        await client.post("/api/v1/index", bodies[i], params={"wait": "true"})
        visible.append((time.perf_counter() - started) * 1000)

    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(write(i)))
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*tasks)
    base += count
    report.values["tts_p99"] = pct(visible, 99)
    report.add(
        "stack",
        f"time to searchable at {rate:.1f} writes/s ({count} writes, ?wait=true)",
        f"p50 {pct(visible, 50):.0f} ms, p99 {pct(visible, 99):.0f} ms",
    )
    report.values["indexed"] = base


async def bench_cached(report: Report, client: Gateway, query: str) -> None:
    request = body(image_data=query, top_k=10)
    await client.post("/api/v1/search", request)  # the cache filled before it is timed
    if shutil.which("wrk"):
        script = (
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = '{request.decode()}'\n"
        )
        out = await _wrk(client, script, "-t2 -c32 -d10s", "/api/v1/search")
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        # Anchored: an unanchored "99%" also matches the end of a "+/- Stdev" like 88.99%.
        p99 = _wrk_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
        p50 = _wrk_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        how = f"wrk -t2 -c32 -d10s{', ' + errors.group(1) + ' non-2xx' if errors else ''}"
    else:
        latencies: list[float] = []

        async def one(_: int) -> None:
            started = time.perf_counter()
            await client.post("/api/v1/search", request)
            latencies.append((time.perf_counter() - started) * 1000)

        took = await run_limited(3000, 32, one)
        rate, p50, p99, how = 3000 / took, pct(latencies, 50), pct(latencies, 99), "aiohttp client"
    report.values["cached_rate"] = rate
    report.values["cached_p99"] = p99
    report.add(
        "stack",
        f"cached search, concurrency 32 ({how})",
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, {rate:,.0f}/s",
    )


def _wrk_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


# ----------------------------------------------------------------------------- 4. spans


async def bench_spans(
    report: Report, client: Gateway, receiver: OtlpReceiver, queries: list[str]
) -> None:
    ids = [uuid.uuid4().hex for _ in queries]
    await searches(
        client,
        queries,
        1,
        headers=lambda i: {"traceparent": f"00-{ids[i]}-{uuid.uuid4().hex[:16]}-01"},
    )
    await asyncio.sleep(2)  # the services' batch span processors flush every 200 ms
    offsets: dict[tuple[str, str], list[float]] = defaultdict(list)
    durations: dict[tuple[str, str], list[float]] = defaultdict(list)
    totals: list[float] = []
    for trace_id in ids:
        spans = receiver.trace(trace_id)
        root = _root(spans)
        if root is None:
            continue
        totals.append(root.ms)
        for span in spans:
            key = (span.service.removeprefix("imgsim-"), span.name)
            offsets[key].append((span.start_ns - root.start_ns) / 1e6)
            durations[key].append(span.ms)
    for key in sorted(offsets, key=lambda k: statistics.median(offsets[k])):
        service, name = key
        report.add(
            "search spans",
            f"{service}: {name}",
            f"starts at {statistics.median(offsets[key]):.1f} ms, "
            f"takes {statistics.median(durations[key]):.1f} ms (median of {len(durations[key])})",
        )
    report.add(
        "search spans",
        "whole search at the gateway",
        f"{statistics.median(totals):.1f} ms (median of {len(totals)} traces)",
    )


def _root(spans: list[ReceivedSpan]) -> ReceivedSpan | None:
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.service == "imgsim-gateway" and s.parent_id not in ids]
    return max(roots, key=lambda s: s.ms, default=None)


# ----------------------------------------------------------------------------- 5. accept


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """User + system CPU seconds of a process so far (Linux /proc), with those of the
    processes it runs now (the gateway's workers, an index build) unless ``children`` is
    False (this benchmark runs the whole stack as its children)."""
    total = 0.0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except FileNotFoundError:  # it ended meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        if not children:
            break
        for task in tasks:
            with contextlib.suppress(FileNotFoundError):
                stack += [int(c) for c in (task / "children").read_text().split()]
    return total


async def bench_accept(
    report: Report, client: Gateway, count: int, pids: dict[str, int], verify: str
) -> None:
    """Index requests with 100 KB JPEGs (the size the accept target names; 102,496 bytes
    at 640×480) at concurrency 32, the embedder stopped: wrk when installed (a client in
    this process would take a good part of the two cores), and the CPU each accepted
    image cost the gateway and the broker. ``verify`` is the gateway's
    GATEWAY_VERIFY_WRITES (decode, the default, or header)."""
    jpeg = photo(10_000, noise=10)
    used = {name: cpu_seconds(pid) for name, pid in pids.items()}
    wrk = shutil.which("wrk")
    if wrk:
        seconds = 10
        script = (
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f'local image = "{b64(jpeg)}"\nlocal n = 0\n'
            f'local tag = "accept-{uuid.uuid4().hex[:6]}-" .. math.random(1, 1000000000)\n'
            "request = function()\n  n = n + 1\n"
            '  local body = \'{"image_data": "\' .. image .. \'", "image_id": "\' .. tag'
            " .. '-' .. n .. '\"}'\n"
            '  return wrk.format(nil, "/api/v1/index", nil, body)\nend\n'
        )
        out = await _wrk(client, script, f"-t2 -c32 -d{seconds}s", "/")
        accepted = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        refused = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if refused:
            raise RuntimeError(f"{refused.group(1)} index requests were refused:\n{out}")
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        how = f"wrk -t2 -c32 -d{seconds}s"
    else:
        payloads = [b64(jpeg)] * count
        took = await index_all(client, payloads, 32, f"accept-{uuid.uuid4().hex[:6]}")
        accepted, rate, how = count, count / took, "aiohttp client"
    cost = {name: (cpu_seconds(pid) - used[name]) / accepted * 1000 for name, pid in pids.items()}
    suffix = "" if verify == "decode" else f"_{verify}"
    report.values[f"accept_rate{suffix}"] = rate
    report.values[f"accept_cpu_ms{suffix}"] = sum(cost.values())
    report.add(
        "ceiling",
        f"gateway accept, {len(jpeg) / 1000:.0f} KB 640×480 JPEGs, c=32, embedder stopped, "
        f"writes checked by {verify} ({how})",
        f"{rate:,.0f} images/s (durable in Kafka); CPU per image: "
        + ", ".join(f"{name} {ms:.2f} ms" for name, ms in cost.items()),
    )


async def _wrk(client: Gateway, script: str, options: str, path: str) -> str:
    """wrk's output for ``script`` against the gateway."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as file:
        file.write(script)
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            ["wrk", *options.split(), "--latency", "-s", file.name,
             client.base_url.rstrip("/") + path],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    finally:
        os.unlink(file.name)
    return done.stdout


async def bench_roundtrip(report: Report, bootstrap: str, searches: int) -> None:
    """Kafka request/reply as a search crosses it, with trivial responders: the gateway's
    requester sends a ~96 KB query, a relay on the queries topic (the embedder's place)
    publishes ~3 KB to the searches topic, and a responder there (the indexer's place)
    answers ~1 KB to the reply topic. All three run in this process, with the services'
    latency settings and their handlers' form (the message from the ``received``
    decoder); the rate at concurrency 32 is a floor of what the broker and the clients
    carry without the model."""
    settings = KafkaSettings(
        bootstrap_servers=bootstrap, topic_prefix=f"rr{uuid.uuid4().hex[:6]}.", partitions=6
    )
    topics = settings.topics
    await ensure_topics(settings)
    broker = KafkaBroker(bootstrap, **broker_logging())  # the workers' logging, as they have it
    wait_ms = settings.latency_fetch_max_wait_ms
    vector, answer = b"v" * 3 * 1024, b"a" * 1024

    @broker.subscriber(
        topics.queries, group_id=f"{topics.queries}-relay", fetch_max_wait_ms=wait_ms,
        auto_offset_reset="earliest", max_workers=16, no_reply=True, decoder=received,
    )  # fmt: skip
    async def relay(message: Received) -> None:
        await broker.publish(
            vector, topics.searches, correlation_id=message.correlation_id,
            reply_to=message.reply_to,
        )  # fmt: skip

    @broker.subscriber(
        topics.searches, group_id=f"{topics.searches}-answer", fetch_max_wait_ms=wait_ms,
        auto_offset_reset="earliest", max_workers=16, decoder=received,
    )  # fmt: skip
    async def respond(message: Received) -> bytes:
        return answer

    await broker.start()
    producer = make_producer(settings, linger_ms=settings.latency_linger_ms)
    await producer.start()
    requester = Requester(
        producer, bootstrap, topics.replies(uuid.uuid4().hex[:12]), fetch_max_wait_ms=wait_ms
    )
    await requester.start()
    query = b"q" * 96 * 1024
    try:
        for _ in range(20):  # the groups settle, the connections open
            await requester.request(topics.queries, query, timeout_s=30)
        for concurrency, count in ((1, searches), (32, 10 * searches)):
            latencies: list[float] = []

            async def one(_: int, latencies: list[float] = latencies) -> None:
                started = time.perf_counter()
                await requester.request(topics.queries, query, timeout_s=30)
                latencies.append((time.perf_counter() - started) * 1000)

            took = await run_limited(count, concurrency, one)
            report.values[f"roundtrip_c{concurrency}_p50"] = pct(latencies, 50)
            report.add(
                "ceiling",
                f"search's Kafka round trip (two hops and the reply, trivial responders), "
                f"concurrency {concurrency}",
                latency_text(latencies, count / took),
            )
    finally:
        await requester.stop()
        await producer.stop()
        await broker.stop()


# ----------------------------------------------------------------------------- targets


def judge(report: Report) -> None:
    v = report.values
    if "e2e_rate" in v:
        ratio = v["e2e_rate"] / v["model_jpeg_rate"]
        report.target(
            "index end to end ≥ 80 % of the model's JPEG-bytes rate",
            f"{ratio:.1%} ({v['e2e_rate']:.1f} / {v['model_jpeg_rate']:.1f}); the CPU the whole "
            f"stack spent per image allows {v['e2e_ceiling']:.1f}/s on these cores",
            ratio >= 0.8,
        )
        bound = v["model_b1_s"] * 1000 + 15
        report.target(
            "uncached search c=1: p50 ≤ batch-1 forward + 15 ms",
            f"{v['search_c1_p50']:.0f} ms vs {bound:.0f} ms",
            v["search_c1_p50"] <= bound,
        )
        ratio = v["search_c8_rate"] / v["model_b8_rate"]
        report.target(
            "uncached search c=8: ≥ 70 % of the batch-8 rate",
            f"{ratio:.1%} ({v['search_c8_rate']:.1f} / {v['model_b8_rate']:.1f}); the CPU the "
            f"whole stack spent per search allows {v['search_c8_ceiling']:.1f}/s",
            ratio >= 0.7,
        )
        bound = 2 * v["model_b8_s"] * 1000 + 50
        report.target(
            "uncached search c=8: p99 ≤ 2× batch-8 forward + 50 ms",
            f"{v['search_c8_p99']:.0f} ms vs {bound:.0f} ms",
            v["search_c8_p99"] <= bound,
        )
        report.target(
            "cached search c=32: ≥ 1,500/s, p99 ≤ 50 ms",
            f"{v['cached_rate']:,.0f}/s, p99 {v['cached_p99']:.1f} ms",
            v["cached_rate"] >= 1500 and v["cached_p99"] <= 50,
        )
        ratio = v["search_bulk_p99"] / v["search_c1_p99"]
        report.target(
            "search p99 under bulk ≤ 2× idle p99",
            f"{ratio:.2f}× ({v['search_bulk_p99']:.0f} / {v['search_c1_p99']:.0f} ms)",
            ratio <= 2,
        )
        report.target(
            "time to searchable p99 ≤ 1 s at half load",
            f"{v['tts_p99']:.0f} ms",
            v["tts_p99"] <= 1000,
        )
    if "accept_rate" in v:
        header = v.get("accept_rate_header", float("nan"))
        report.target(
            "gateway accept ≥ 1,000 images/s",
            f"{v['accept_rate']:,.0f}/s ({v['accept_cpu_ms']:.1f} ms of CPU an image); "
            f"checking headers only {header:,.0f}/s "
            f"({v.get('accept_cpu_ms_header', float('nan')):.1f} ms)",
            v["accept_rate"] >= 1000,
        )
    if "store_rate" in v:
        report.target(
            "indexer ≥ 20,000 points/s into the embedded store",
            f"{v['store_rate']:,.0f}/s",
            v["store_rate"] >= 20000,
        )
    print()
    for what, measured, ok in report.targets:
        print(f"{'ok  ' if ok else 'MISS'} {what}: {measured}")


# ----------------------------------------------------------------------------- main


@contextlib.contextmanager
def local_stack(folder: Path, extra_env: dict[str, str]) -> Iterator[LocalStack]:
    stack = LocalStack(
        StackConfig(
            data_dir=folder,
            kafka_port=free_port(),
            redis_port=free_port(),
            gateway_port=free_port(),
            topic_prefix=f"bench{uuid.uuid4().hex[:6]}.",
            extra_env=extra_env,
        )
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def stack_pids(stack: LocalStack) -> dict[str, int]:
    processes = [*stack.services, stack.kafka, stack.redis]
    return {p.name: p.pid for p in processes if p.pid is not None}


async def run_stack_phases(report: Report, args: argparse.Namespace) -> None:
    base_env = {
        "NO_PROXY": os.environ.get("NO_PROXY", "") + ",127.0.0.1",
        "EMBEDDER_MODEL__QUANTIZATION": args.quantization,  # the bare model's, phase 1
    }
    with tempfile.TemporaryDirectory() as folder, local_stack(Path(folder), base_env) as stack:
        async with Gateway(stack.gateway_url) as client:
            await bench_stack(report, client, args, stack_pids(stack))
            with OtlpReceiver() as receiver:
                for service in reversed(stack.services):
                    service.stop()
                stack.config.extra_env = {**base_env, **receiver.env()}
                stack.start_services()
                await wait_indexed(client, int(report.values["indexed"]))
                await bench_spans(report, client, receiver, Images(7_000_000).take(args.traces))
            await bench_roundtrip(report, stack.kafka.bootstrap, args.searches)
            for verify in ("decode", "header"):  # untraced again, each way of checking writes
                for service in reversed(stack.services):
                    service.stop()
                stack.config.extra_env = {**base_env, "GATEWAY_VERIFY_WRITES": verify}
                stack.start_services()
                next(s for s in stack.services if s.name == "embedder").stop()
                pids = stack_pids(stack)
                await bench_accept(
                    report, client, args.accept, {k: pids[k] for k in ("gateway", "kafka")}, verify
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5, help="per model measurement")
    parser.add_argument("--images", type=int, default=400, help="end-to-end index run")
    parser.add_argument("--searches", type=int, default=80, help="at concurrency 1")
    parser.add_argument("--tts-seconds", type=float, default=20)
    parser.add_argument("--traces", type=int, default=20)
    parser.add_argument("--accept", type=int, default=2000)
    parser.add_argument("--points", type=int, default=20000)
    parser.add_argument("--model-only", action="store_true", help="phases 1 and 2 only")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    parser.add_argument(
        "--quantization",
        choices=("none", "int8"),
        default="none",
        help="the embedder's EMBEDDER_MODEL__QUANTIZATION, for the bare model and the stack",
    )
    args = parser.parse_args()
    cpu = platform.processor() or platform.machine()
    header = (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — {platform.node()}, {cpu}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}"
        + (", int8 towers" if args.quantization == "int8" else "")
    )
    print(header, flush=True)
    report = Report()
    bench_model(report, args.seconds, args.quantization)
    bench_preprocess(report, args.seconds / 2)
    asyncio.run(bench_store(report, args.points))
    if not args.model_only:
        asyncio.run(run_stack_phases(report, args))
    judge(report)
    if args.markdown:
        args.markdown.write_text(report.markdown(f"### {header}"))


if __name__ == "__main__":
    main()
