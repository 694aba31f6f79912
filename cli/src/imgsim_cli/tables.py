"""Rich renderings of the gateway's answers."""

from __future__ import annotations

import json
from collections.abc import Sequence

from rich.table import Table

from imgsim_cli.deadletters import DeadLetter
from imgsim_cli.indexing import Failure
from imgsim_cli.responses import SearchResponse, Stats
from imgsim_core.contracts import ReindexStatus


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def search_table(response: SearchResponse) -> Table:
    table = Table(title="results", title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("image id", overflow="fold")
    table.add_column("score", justify="right")
    table.add_column("metadata", overflow="fold")
    for rank, hit in enumerate(response.results, start=1):
        metadata = "" if hit.metadata is None else _json(hit.metadata)
        table.add_row(str(rank), hit.image_id, f"{hit.score:.4f}", metadata)
    return table


def search_footer(response: SearchResponse) -> str:
    cached = "cached" if response.cached else "not cached"
    return f"{len(response.results)} results in {response.took_ms:.1f} ms ({cached})"


def failures_table(failures: Sequence[Failure]) -> Table:
    table = Table(title=f"{len(failures)} failed", title_justify="left", title_style="bold red")
    table.add_column("path", overflow="fold")
    table.add_column("error", style="red")
    table.add_column("message", overflow="fold")
    for failure in failures:
        table.add_row(str(failure.path), failure.code, failure.message)
    return table


def stats_table(stats: Stats) -> Table:
    table = Table(title="imgsim", title_justify="left", show_header=False)
    table.add_column("name", style="bold")
    table.add_column("value", overflow="fold")
    rows: list[tuple[str, object]] = [
        ("indexed images", stats.indexed_images),
        ("collection", stats.collection),
        ("store", stats.store),
        ("model", stats.model_id),
        ("images in /s", stats.images_in_per_s),
        ("images out /s", stats.images_out_per_s),
        ("dead letters", stats.dead_letters),
        ("searches in flight", stats.searches_in_flight),
        ("uptime (s)", stats.uptime_s),
    ]
    rows += [
        (f"cache {name}", f"{counts.get('hits', 0)} hits, {counts.get('misses', 0)} misses")
        for name, counts in sorted(stats.cache.items())
    ]
    for name, value in rows:
        table.add_row(name, "–" if value is None else str(value))
    return table


def lag_table(stats: Stats) -> Table:
    table = Table(title="consumer lag", title_justify="left")
    table.add_column("topic")
    table.add_column("group")
    table.add_column("lag", justify="right")
    for topic, lag in sorted(stats.consumer_lag.items()):
        table.add_row(topic, lag.group, str(lag.lag))
    return table


def reindex_table(status: ReindexStatus) -> Table:
    table = Table(title="reindex", title_justify="left", show_header=False)
    table.add_column("name", style="bold")
    table.add_column("value", overflow="fold")
    rows: list[tuple[str, object]] = [
        ("state", status.state),
        ("collection", status.collection),
        ("target", status.target),
        ("processed", f"{status.processed} of {status.total}"),
        ("old collections", ", ".join(status.old_collections) or None),
        ("error", status.error),
    ]
    for name, value in rows:
        if value is not None:
            table.add_row(name, str(value))
    return table


def deadletter_table(letters: Sequence[DeadLetter]) -> Table:
    table = Table(title=f"{len(letters)} dead letters", title_justify="left")
    table.add_column("position", no_wrap=True)
    table.add_column("image id", overflow="fold")
    table.add_column("from", no_wrap=True)
    table.add_column("reason", overflow="fold", style="red")
    table.add_column("bytes", justify="right")
    for d in letters:
        size = "tombstone" if d.value is None else str(len(d.value))
        table.add_row(d.position, d.image_id, d.source, d.reason, size)
    return table


def deadletter_details(letter: DeadLetter) -> Table:
    table = Table(title=f"dead letter {letter.position}", title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("image id", letter.image_id)
    table.add_row("reason", letter.reason)
    table.add_row("from", letter.source)
    table.add_row("value", "tombstone" if letter.value is None else f"{len(letter.value)} bytes")
    for name, value in letter.headers.items():
        table.add_row(f"header {name}", value.decode("utf-8", "replace"))
    return table
