"""Repeated-query workload against a running imgsim (``make up``): cache hit rate and the
latency of searches served from the result cache, from the embedding cache only, and
uncached.

    uv run python bench/cache.py --url http://127.0.0.1:8000 --distinct 20 --repeats 10

Each of ``--distinct`` query images is searched ``--repeats`` times in a shuffled order
(the first time is a full miss); then each is searched once more with another ``top_k``
(a result miss whose embedding is cached, so it skips the embedder).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import platform
import random
import time

import httpx
import numpy as np
from pipeline import make_jpeg  # type: ignore[import-not-found]


def summary(name: str, latencies: list[float]) -> str:
    if not latencies:
        return f"{name}: none"
    values = np.asarray(latencies)
    return (
        f"{name}: n={len(values)}, p50 {np.percentile(values, 50):.1f} ms, "
        f"p99 {np.percentile(values, 99):.1f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--distinct", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    salt = random.randrange(1 << 30)  # new queries each run, so the first is a real miss
    queries = [base64.b64encode(make_jpeg(salt + i)).decode() for i in range(args.distinct)]
    order = [i for i in range(args.distinct) for _ in range(args.repeats)]
    random.Random(0).shuffle(order)
    cached: list[float] = []
    uncached: list[float] = []
    embedding_only: list[float] = []
    print(f"machine: {platform.node()} {platform.machine()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    async with httpx.AsyncClient(base_url=args.url, timeout=60) as client:
        before = (await client.get("/api/v1/stats")).json()["cache"]
        for i in order:
            started = time.perf_counter()
            response = await client.post("/api/v1/search", json={"image_data": queries[i]})
            response.raise_for_status()
            took = (time.perf_counter() - started) * 1000
            (cached if response.json()["cached"] else uncached).append(took)
        for query in queries:
            started = time.perf_counter()
            response = await client.post("/api/v1/search", json={"image_data": query, "top_k": 7})
            response.raise_for_status()
            embedding_only.append((time.perf_counter() - started) * 1000)
        after = (await client.get("/api/v1/stats")).json()["cache"]
    hits = after["result"]["hits"] - before["result"]["hits"]
    misses = after["result"]["misses"] - before["result"]["misses"]
    emb_hits = after["embedding"]["hits"] - before["embedding"]["hits"]
    emb_misses = after["embedding"]["misses"] - before["embedding"]["misses"]
    print(f"result cache: {hits} hits, {misses} misses, hit rate {hits / (hits + misses):.1%}")
    print(f"embedding cache: {emb_hits} hits, {emb_misses} misses")
    print(summary("result-cache hit", cached))
    print(summary("embedding-cache hit (skips the embedder)", embedding_only))
    print(summary("uncached", uncached))


if __name__ == "__main__":
    asyncio.run(main())
