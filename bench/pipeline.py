"""End-to-end benchmark against a running imgsim (``make up`` in another terminal).

Measures index throughput (HTTP accepted → searchable, images/s) and search latency
(p50, p99) and throughput at concurrency 1 and 8, and prints them. Images are generated
(distinct 256×256 JPEGs), so the numbers include real decoding and CLIP inference.

    uv run python bench/pipeline.py --url http://127.0.0.1:8000 --images 300
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import platform
import random
import statistics
import time
import uuid

import httpx
import numpy as np
from PIL import Image, ImageDraw


def make_jpeg(seed: int, size: int = 256) -> bytes:
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(grid).resize((size, size), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    x, y = (int(v) for v in rng.integers(0, size // 2, size=2))
    draw.ellipse(
        (x, y, x + size // 3, y + size // 3), fill=tuple(int(c) for c in rng.integers(0, 256, 3))
    )
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def indexed(client: httpx.AsyncClient) -> int:
    response = await client.get("/api/v1/stats")
    response.raise_for_status()
    return int(response.json()["indexed_images"])


async def bench_index(client: httpx.AsyncClient, count: int, concurrency: int) -> dict[str, float]:
    run = uuid.uuid4().hex[:8]
    payloads = [base64.b64encode(make_jpeg(i)).decode() for i in range(count)]
    before = await indexed(client)
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            response = await client.post(
                "/api/v1/index", json={"image_data": payloads[i], "image_id": f"bench-{run}-{i}"}
            )
            response.raise_for_status()

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    accepted = time.perf_counter() - started
    while True:  # poll: the pipeline has no completion callback
        if await indexed(client) >= before + count:
            break
        await asyncio.sleep(0.2)
    searchable = time.perf_counter() - started
    return {
        "accepted_per_s": count / accepted,
        "indexed_per_s": count / searchable,
        "seconds": searchable,
    }


async def bench_search(
    client: httpx.AsyncClient, requests: int, concurrency: int, first_seed: int
) -> dict[str, float]:
    """Distinct queries (new seeds), so no search is served from the result cache."""
    queries = [base64.b64encode(make_jpeg(first_seed + i)).decode() for i in range(requests)]
    latencies: list[float] = []
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            started = time.perf_counter()
            response = await client.post(
                "/api/v1/search", json={"image_data": queries[i], "top_k": 10}
            )
            response.raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    elapsed = time.perf_counter() - started
    return {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "mean_ms": statistics.fmean(latencies),
        "per_s": requests / elapsed,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--searches", type=int, default=200)
    parser.add_argument("--index-concurrency", type=int, default=16)
    args = parser.parse_args()
    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''}".strip())
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    async with httpx.AsyncClient(base_url=args.url, timeout=120) as client:
        result = await bench_index(client, args.images, args.index_concurrency)
        print(
            f"index  {args.images} images: accepted {result['accepted_per_s']:.1f}/s, "
            f"searchable end to end {result['indexed_per_s']:.1f} images/s "
            f"({result['seconds']:.1f} s)"
        )
        seed = 1_000_000 + random.randrange(1 << 30)  # fresh queries on every run
        await bench_search(client, 10, 1, seed)  # warm-up
        for phase, concurrency in enumerate((1, 8), start=1):
            stats = await bench_search(
                client, args.searches, concurrency, seed + phase * args.searches
            )
            print(
                f"search concurrency {concurrency}: p50 {stats['p50_ms']:.1f} ms, "
                f"p99 {stats['p99_ms']:.1f} ms, mean {stats['mean_ms']:.1f} ms, "
                f"{stats['per_s']:.1f} searches/s"
            )


if __name__ == "__main__":
    asyncio.run(main())
