"""The embedded store's cost per image: RSS, disk and search time at N points, before and
after Qdrant Edge builds its HNSW index (``EdgeShard.optimize()``).

Writes N clustered 512-d unit vectors (64 clusters, like CLIP embeddings, which crowd
into a few directions) with a keyword and a numeric metadata field through the indexer's
own :class:`~imgsim_indexer.edge_store.EdgeStore` in batches of 256, then measures:
the upsert rate, the process RSS and the shard's disk use, the p50/p99 of 200 top-10
searches (the store as the indexer runs it: no HNSW build, every search is a scan), the
build's wall time and peak RSS, and the same searches after it, with recall@10 of the
built index against the exact scan (the same queries' results before the build).

    uv run python bench/store_memory.py --points 200000

With ``--keep DIR`` the store stays in DIR; a later run with the same ``--keep``,
``--points`` and ``--seed`` finds the shard built there and measures only the searches,
so search settings can be compared on one built shard:

    uv run python bench/store_memory.py --points 1000000 --quantization int8 \
        --keep /var/tmp/shard-1m --search-ef 256 --oversampling 2,3,4

Each search setting reopens the store (timed), runs the queries once (the first pass:
the graph and vectors read from disk or page cache) and then again (the warm pass).

With ``--step K`` the points arrive K at a time and the index is built after each step,
as the indexer's background builds do while a store grows; each step prints its build
time, segment count, warm search times and recall.

The input to ``docs/capacity.md``; the million-scale benchmark goes further (search
while it builds, through Kafka and the gateway).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import resource
import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from imgsim_core.contracts import Condition, Range
from imgsim_core.settings import EdgeBuildSettings, QdrantSettings, VectorIndexSettings
from imgsim_devstack.vectors import ClusteredVectors, exact_top, number, recall
from imgsim_indexer.edge_store import EdgeStore
from imgsim_indexer.payload import Point

DIM = 512
BATCH = 256


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def anon_mb() -> float:
    """Resident memory that is not a mapped file: what the page cache cannot take back."""
    with open(f"/proc/{os.getpid()}/status") as f:
        line = next(line for line in f if line.startswith("RssAnon:"))
    return int(line.split()[1]) / 1024


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


class PeakRss:
    """Samples RSS every 0.2 s in a thread (the build holds the GIL; /proc still answers)."""

    def __init__(self) -> None:
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


FILTERS: dict[str, dict[str, Condition]] = {
    "1 %": {"tag": "t7"},  # image j is tagged t<j % 100>
    "10 %": {"n": Range(lt=26)},  # image j has n = j % 256
}


def matching(share: str, points: int) -> np.ndarray:
    """Which of images 0 … points - 1 the filter ``share`` lets through."""
    j = np.arange(points)
    return (j % 100 == 7) if share == "1 %" else (j % 256 < 26)


async def searches(
    store: EdgeStore, queries: np.ndarray, share: str | None = None
) -> tuple[list[list[int]], float, float]:
    """Top-10 of each query; with ``share``, among the points of that filter."""
    took, found = [], []
    where = FILTERS[share] if share else None
    for q in queries:
        started = time.perf_counter()
        hits = await store.search(q, top_k=10, threshold=None, with_metadata=False, filter=where)
        took.append((time.perf_counter() - started) * 1000)
        found.append([number(h.image_id) for h in hits])
    return found, float(np.percentile(took, 50)), float(np.percentile(took, 99))


async def fill(store: EdgeStore, written: np.ndarray, offset: int = 0) -> float:
    """Write the vectors (images ``img/<offset>`` on) in batches; the seconds it took."""
    now = datetime.now(UTC)
    started = time.perf_counter()
    for first in range(offset, offset + len(written), BATCH):
        block = written[first - offset : first - offset + BATCH]
        await store.upsert(
            [
                Point(f"img/{j}", v, "bench", {"tag": f"t{j % 100}", "n": j % 256}, now)
                for j, v in enumerate(block, start=first)
            ]
        )
    return time.perf_counter() - started


async def grow(store: EdgeStore, written: np.ndarray, queries: np.ndarray, step: int) -> None:
    """Write ``step`` points at a time and build after each step, as the indexer's
    background builds do while points arrive; each step's build time, segment count,
    warm search times and recall@10 against exact search over the points so far."""
    shard = store._opened()
    in_all = 0.0
    for upto in range(step, len(written) + 1, step):
        await fill(store, written[upto - step : upto], offset=upto - step)
        started = time.perf_counter()
        await asyncio.to_thread(shard.optimize)
        build_s = time.perf_counter() - started
        in_all += build_s
        await searches(store, queries)  # the first pass after a build reads it in
        found, p50, p99 = await searches(store, queries)
        got = recall(found, exact_top(written[:upto], queries, 10))
        print(f"{upto:,} points: build {build_s:.1f} s ({in_all:.1f} s in all),"
              f" {shard.info().segments_count} segments, search p50 {p50:.2f} ms"
              f" p99 {p99:.2f} ms, recall@10 {got:.3f}", flush=True)  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--quantization", choices=["none", "int8"], default="none")
    parser.add_argument("--m", type=int, default=VectorIndexSettings().hnsw_m)
    parser.add_argument("--ef-construct", type=int, default=VectorIndexSettings().hnsw_ef_construct)
    parser.add_argument(
        "--search-ef", default="64,128,256", help="comma-separated, each measured after the build"
    )
    parser.add_argument(
        "--oversampling", default="2", help="with int8: comma-separated, each with each search ef"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--step",
        type=int,
        default=0,
        help="write this many points, build, and again (0: one build)",
    )
    parser.add_argument(
        "--max-segment-kb", type=int, help="INDEXER_QDRANT__INDEX__MAX_SEGMENT_SIZE_KB"
    )
    parser.add_argument(
        "--in-ram", action="store_true", help="INDEXER_QDRANT__INDEX__ON_DISK=false"
    )
    parser.add_argument(
        "--keep", type=Path, help="the store's folder, kept; a shard built there is measured again"
    )
    args = parser.parse_args()
    index = VectorIndexSettings(
        quantization=args.quantization,
        hnsw_m=args.m,
        hnsw_ef_construct=args.ef_construct,
        max_segment_size_kb=args.max_segment_kb,
        on_disk=not args.in_ram,
    )
    vectors = ClusteredVectors(DIM, clusters=64, seed=args.seed)
    work = args.keep or Path(tempfile.mkdtemp(prefix="imgsim-store-"))
    # This benchmark runs each build itself, in process: the store's own background
    # builds would copy and build the shard beside it and switch it under the measurement.
    settings = QdrantSettings(path=str(work), index=index, build=EdgeBuildSettings(enabled=False))
    indexes = {"tag": "keyword", "n": "integer"}
    built = (work / settings.collection / "CURRENT").exists()
    # Every vector is made before the baseline, so the RSS figures are the store's alone.
    written = vectors.take(args.points)
    queries = vectors.take(args.queries)
    exact = exact_top(written, queries, 10)
    exact_in = {
        share: exact_top(written, queries, 10, matching(share, args.points)) for share in FILTERS
    }
    base_rss, base_anon = rss_mb(), anon_mb()
    n = args.points
    print(
        f"points: {n:,} × {DIM} float32 with 2 indexed payload fields, Qdrant Edge, "
        f"m={index.hnsw_m} ef_construct={index.hnsw_ef_construct} "
        f"quantization={index.quantization} "
        f"max_segment_size_kb={index.max_segment_size_kb} on_disk={index.on_disk}"
        + (f", the shard built in {work} before" if built else "")
    )
    if not built and args.step:
        store = EdgeStore(settings, DIM, payload_indexes=indexes)
        await store.open()
        await grow(store, written, queries, args.step)
        await store.close()
    elif not built:
        store = EdgeStore(settings, DIM, payload_indexes=indexes)
        await store.open()
        upsert_s = await fill(store, written)
        _, scan_p50, scan_p99 = await searches(store, queries)
        _, fscan_p50, fscan_p99 = await searches(store, queries, "1 %")
        rss_before, disk_before = rss_mb() - base_rss, disk_mb(work)
        shard = store._opened()  # the build is the shard's own call, not part of the store API
        with PeakRss() as peak:
            started = time.perf_counter()
            await asyncio.to_thread(shard.optimize)
            build_s = time.perf_counter() - started
        segments = shard.info().segments_count
        rss_after, disk_after = rss_mb() - base_rss, disk_mb(work)
        await store.close()
        print(f"upsert: {n / upsert_s:,.0f} points/s ({upsert_s:.1f} s, batches of {BATCH})")
        per_point = 2**20 / n
        print(f"before the build: RSS +{rss_before:,.0f} MB ({rss_before * per_point:,.0f}"
              f" B/point), disk {disk_before:,.0f} MB ({disk_before * per_point:,.0f} B/point),"
              f" search p50 {scan_p50:.1f} ms p99 {scan_p99:.1f} ms,"
              f" 1 % filter p50 {fscan_p50:.1f} ms p99 {fscan_p99:.1f} ms")  # fmt: skip
        print(f"HNSW build: {build_s:.1f} s, peak RSS +{peak.peak - base_rss:,.0f} MB,"
              f" {segments} segments")  # fmt: skip
        print(f"after the build: RSS +{rss_after:,.0f} MB ({rss_after * per_point:,.0f} B/point),"
              f" disk {disk_after:,.0f} MB ({disk_after * per_point:,.0f} B/point)")  # fmt: skip

    oversampling = [float(o) for o in args.oversampling.split(",")] if index.int8 else [0.0]
    for ef, over in itertools.product((int(e) for e in args.search_ef.split(",")), oversampling):
        # Reopened with each search setting: a restart, timed, then the same queries.
        update: dict[str, object] = {"search_ef": ef}
        if index.int8:
            update["oversampling"] = over
        reopened = EdgeStore(
            settings.model_copy(update={"index": index.model_copy(update=update)}),
            DIM,
            payload_indexes=indexes,
        )
        started = time.perf_counter()
        await reopened.open()
        reopen_s = time.perf_counter() - started
        _, cold_p50, cold_p99 = await searches(reopened, queries)
        found, p50, p99 = await searches(reopened, queries)
        f_found, fp50, fp99 = await searches(reopened, queries, "1 %")
        t_found, tp50, tp99 = await searches(reopened, queries, "10 %")
        rss_open, anon_open = rss_mb() - base_rss, anon_mb() - base_anon
        await reopened.close()
        what = f"search_ef {ef}" + (f" oversampling {over:g}" if index.int8 else "")
        print(f"{what}: reopen {reopen_s:.1f} s (RSS +{rss_open:,.0f} MB, of it"
              f" anonymous +{anon_open:,.0f} MB), first pass p50 {cold_p50:.2f} ms"
              f" p99 {cold_p99:.2f} ms, then p50 {p50:.2f} ms p99 {p99:.2f} ms,"
              f" recall@10 {recall(found, exact):.3f};"
              f" 1 % filter p50 {fp50:.2f} ms p99 {fp99:.2f} ms,"
              f" recall@10 {recall(f_found, exact_in['1 %']):.3f};"
              f" 10 % filter p50 {tp50:.2f} ms p99 {tp99:.2f} ms,"
              f" recall@10 {recall(t_found, exact_in['10 %']):.3f}")  # fmt: skip
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process max RSS {max_rss:,.0f} MB")


if __name__ == "__main__":
    asyncio.run(main())
