"""The gateway's metrics (Prometheus) and tracing hooks."""

from __future__ import annotations

from prometheus_client import Counter

CACHE_HITS = Counter(
    "imgsim_gateway_cache_hits_total", "Cache hits, by cache (embedding, result).", ["cache"]
)
CACHE_MISSES = Counter(
    "imgsim_gateway_cache_misses_total", "Cache misses, by cache (embedding, result).", ["cache"]
)
