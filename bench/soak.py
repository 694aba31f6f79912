"""A mixed-load soak (``make soak``): errors and the memory of every process over time.

    uv run python bench/soak.py                  # 10 minutes on a stack it starts itself
    uv run python bench/soak.py --seconds 60     # a quick run

On a local stack (Kafka, Redis, gateway, embedder, indexer as processes) it runs, at once
and for the whole time: writers replacing and deleting images over a fixed set of 400 ids
(the collection stays the same size, so memory should too), image searches (fresh bytes,
uncached, and repeated bytes, cached), text searches, searches by id and lookups. Every
answer is checked: 2xx, or 404 for an id that was deleted, is right; anything else,
including a timeout, is an error. The resident memory (RSS) of each process is sampled
every ``--sample-s``. At the end, 8 PNGs of 7000×7000 pixels (~150 KB each, under the
pixel limit) are indexed at once (``wait=true``, after the soak's backlog), and the
gateway's and embedder's peak RSS is read before and after: the gateway's decode budget
(``GATEWAY_DECODE_BUDGET_PIXELS``) bounds its part.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import random
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np
from photos import photo  # type: ignore[import-not-found]
from PIL import Image

from bench import b64, local_stack, pct  # type: ignore[import-not-found]
from imgsim_devstack.stack import LocalStack

IDS = 400
WORDS = [
    "red",
    "blue",
    "green",
    "cat",
    "dog",
    "car",
    "tree",
    "house",
    "beach",
    "mountain",
    "city",
    "night",
    "snow",
]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (or its peak, ``VmHWM``) in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def big_png(seed: int, side: int = 7000) -> bytes:
    """A large, highly compressible PNG: a few flat bands (~150 KB at 7000×7000)."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(rng.integers(0, 256, size=(side // 500 + 1, 1, 3), dtype=np.uint8), 500, 0)
    pixels = np.broadcast_to(rows[:side], (side, side, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


class Soak:
    def __init__(self, client: httpx.AsyncClient, until: float) -> None:
        self.client = client
        self.until = until
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.errors: Counter[str] = Counter()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.deleted: set[int] = set()
        self.queries = [b64(photo(900_000 + i)) for i in range(20)]  # repeated: cached
        self.fresh = 1_000_000

    async def call(self, kind: str, method: str, url: str, ok: set[int], **kw: object) -> None:
        started = time.perf_counter()
        try:
            response = await self.client.request(method, url, **kw)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            self.errors[f"{kind}: {type(exc).__name__}"] += 1
            return
        self.latencies[kind].append((time.perf_counter() - started) * 1000)
        self.statuses[(kind, response.status_code)] += 1
        if response.status_code not in ok:
            self.errors[f"{kind}: {response.status_code} {response.text[:120]}"] += 1

    def image(self) -> str:
        self.fresh += 1
        return b64(photo(self.fresh))

    async def writer(self) -> None:
        while time.monotonic() < self.until:
            n = random.randrange(IDS)
            if random.random() < 0.1:
                self.deleted.add(n)
                await self.call("delete", "DELETE", f"/api/v1/images/soak-{n}", {202})
            else:
                self.deleted.discard(n)
                body = {"image_data": self.image(), "image_id": f"soak-{n}", "metadata": {"n": n}}
                await self.call("index", "POST", "/api/v1/index", {202}, json=body)

    async def image_searcher(self) -> None:
        while time.monotonic() < self.until:
            query = self.image() if random.random() < 0.5 else random.choice(self.queries)
            body = {"image_data": query, "top_k": 10}
            await self.call("search image", "POST", "/api/v1/search", {200}, json=body)

    async def text_searcher(self) -> None:
        while time.monotonic() < self.until:
            text = " ".join(random.sample(WORDS, 3))
            body = {"query": text, "top_k": 10, "filter": {"n": {"gte": 0}}}
            await self.call("search text", "POST", "/api/v1/search/text", {200}, json=body)

    async def by_id(self) -> None:
        while time.monotonic() < self.until:
            n = random.randrange(IDS)
            # An id deleted, or never written yet, is a right 404.
            ok = {200, 404}
            await self.call(
                "search similar", "POST", "/api/v1/search/similar", ok,
                json={"image_id": f"soak-{n}", "top_k": 5},
            )  # fmt: skip
            await self.call("get", "GET", f"/api/v1/images/soak-{n}", ok)
            await self.call("stats", "GET", "/api/v1/stats", {200})


async def sample(stack: LocalStack, until: float, every_s: float) -> list[dict[str, float]]:
    processes = [stack.kafka, stack.redis, *stack.services]
    samples: list[dict[str, float]] = []
    started = time.monotonic()
    while time.monotonic() < until:
        row = {"t": time.monotonic() - started}
        for p in processes:
            if p.pid is not None:
                row[p.name] = rss_mb(p.pid)
        row["client"] = rss_mb(os.getpid())
        samples.append(row)
        await asyncio.sleep(every_s)
    return samples


def memory_table(samples: list[dict[str, float]]) -> list[str]:
    """Per process: after warm-up (the first tenth), at the end, the peak, and the growth
    from the second quarter's mean to the last quarter's."""
    names = [k for k in samples[0] if k != "t"]
    n = len(samples)
    lines = [
        "| process | RSS after warm-up | at the end | peak | 2nd → 4th quarter |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        series = [s[name] for s in samples]
        warm = series[min(max(1, n // 10), n - 1)]
        growth = "n/a (under 4 samples)"
        if n >= 4:
            q2 = float(np.mean(series[n // 4 : n // 2]))
            q4 = float(np.mean(series[3 * n // 4 :]))
            growth = f"{q4 - q2:+.0f} MB ({(q4 - q2) / q2 * 100:+.1f} %)"
        lines.append(
            f"| {name} | {warm:.0f} MB | {series[-1]:.0f} MB | {max(series):.0f} MB | {growth} |"
        )
    return lines


async def png_burst(stack: LocalStack, client: httpx.AsyncClient, count: int) -> list[str]:
    gateway = next(s for s in stack.services if s.name == "gateway")
    embedder = next(s for s in stack.services if s.name == "embedder")
    assert gateway.pid is not None
    assert embedder.pid is not None
    pngs = [big_png(i) for i in range(count)]
    before = {s.name: (rss_mb(s.pid), rss_mb(s.pid, "VmHWM")) for s in (gateway, embedder)}  # type: ignore[arg-type]
    started = time.perf_counter()
    responses = await asyncio.gather(
        *(
            client.post(
                "/api/v1/index?wait=true",
                json={"image_data": b64(p), "image_id": f"big-{i}"},
                timeout=300,  # one decode at a time (the budget), then the embedder's
            )
            for i, p in enumerate(pngs)
        )
    )
    took = time.perf_counter() - started
    statuses = Counter(r.status_code for r in responses)
    after = {s.name: rss_mb(s.pid, "VmHWM") for s in (gateway, embedder)}  # type: ignore[arg-type]
    lines = [
        f"{count} PNGs of 7000×7000 ({np.mean([len(p) for p in pngs]) / 1024:.0f} KB each) at "
        f"once, wait=true: {dict(statuses)} in {took:.1f} s",
    ]
    for name, (rss, peak) in before.items():
        lines.append(
            f"- {name}: RSS {rss:.0f} MB before; peak {peak:.0f} MB before, "
            f"{after[name]:.0f} MB after"
        )
    return lines


async def run(args: argparse.Namespace) -> int:
    env = {"NO_PROXY": os.environ.get("NO_PROXY", "") + ",127.0.0.1"}
    env.update(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory() as folder, local_stack(Path(folder), env) as stack:
        async with httpx.AsyncClient(
            base_url=stack.gateway_url, timeout=30, trust_env=False
        ) as client:
            for n in range(IDS):  # every id exists once before the mix starts
                body = {"image_data": b64(photo(n)), "image_id": f"soak-{n}", "metadata": {"n": n}}
                (await client.post("/api/v1/index", json=body)).raise_for_status()
            started = time.monotonic()
            until = started + args.seconds
            soak = Soak(client, until)
            workers = [
                soak.writer(), soak.writer(), soak.image_searcher(), soak.image_searcher(),
                soak.text_searcher(), soak.by_id(),
            ]  # fmt: skip
            samples, *_ = await asyncio.gather(sample(stack, until, args.sample_s), *workers)
            took = time.monotonic() - started
            report(soak, samples, took)
            if args.pngs:  # after the report: a slow burst must not lose the soak's numbers
                print("\n".join(await png_burst(stack, client, args.pngs)))
    return 1 if soak.errors else 0


def report(soak: Soak, samples: list[dict[str, float]], took: float) -> None:
    total = sum(soak.statuses.values())
    errors = sum(soak.errors.values())
    print(f"\n{total} requests in {took:.0f} s ({total / took:.1f}/s), errors: {errors}")
    print("| requests | count | p50 | p99 |\n|---|---|---|---|")
    for kind, latencies in sorted(soak.latencies.items()):
        p50, p99 = pct(latencies, 50), pct(latencies, 99)
        print(f"| {kind} | {len(latencies)} | {p50:.0f} ms | {p99:.0f} ms |")
    print("statuses:", dict(sorted(soak.statuses.items())))
    for error, count in soak.errors.most_common(10):
        print(f"ERROR ×{count}: {error}")
    print()
    print("\n".join(memory_table(samples)), flush=True)
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--sample-s", type=float, default=10)
    parser.add_argument("--pngs", type=int, default=8, help="7000×7000 PNGs at the end (0: none)")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE",
        help="an environment variable for every service (repeatable), e.g. MALLOC_ARENA_MAX=2",
    )  # fmt: skip
    args = parser.parse_args()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — {platform.node()}, "
        f"{os.cpu_count()} cores, soak {args.seconds:.0f} s, env {args.env or 'default'}",
        flush=True,
    )
    raise SystemExit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
