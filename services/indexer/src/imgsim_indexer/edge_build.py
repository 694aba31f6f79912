"""Qdrant Edge's HNSW builds, in a child process, while the store keeps serving.

Why a child: ``EdgeShard.optimize()`` holds the GIL for the whole build (measured: a
1 ms Python ticker ticked once in a 28.5 s build of 200k points), so a build in the
indexer's process would stop every search, lookup and write for minutes at a million.
Without builds, every point stays in an unindexed segment and each search is a scan
(~20 ms at 200k). So :class:`IndexBuilds` watches the shard and, when at least
``min_points`` points wait unindexed (``EdgeBuildSettings``):

1. writes pause; the shard is flushed and its directory copied to the next generation
   (:mod:`~imgsim_indexer.edge_setup`); searches go on meanwhile;
2. writes resume on the live shard, and each one is also kept in a :class:`Journal`;
3. ``python -m imgsim_indexer.edge_child <dir>`` (:mod:`~imgsim_indexer.edge_child`, at
   a lower CPU priority) loads the copy with the same configuration, optimizes, flushes, closes;
4. the built copy is loaded on the store's thread (the load holds the GIL too: reads
   wait for it; with ``on_disk`` it maps the files and reads nothing, 0.2 s at 200k int8
   points against 0.5 s read into RAM), its files are read into the page cache on
   another thread (:func:`~imgsim_indexer.edge_setup.read_in`) while the old shard
   serves, the journal is replayed into it a chunk at a time between other calls, and
   the last chunk, a flush, the switch of the shard's link and the swap of the open
   shard happen in one call, so no write falls between them;
5. the old generation is removed.

A build that fails, times out, or whose journal outgrows ``journal_max_points`` is
abandoned: the copy is removed, the live shard is as it was, and the next check tries
again. A crash at any step leaves the link naming a whole shard, and the next open
removes the other generation (``edge_setup.settle``).

Deleted points still count as indexed in ``ShardInfo`` until their segment is rebuilt,
and points in segments under the indexing threshold are never indexed, so a build starts
on the growth of ``points - indexed`` over what the last build left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import qdrant_edge as qe
from prometheus_client import Counter, Gauge, Histogram

from imgsim_core.settings import EdgeBuildSettings, VectorIndexSettings
from imgsim_core.tasks import pause
from imgsim_indexer import edge_setup as setup
from imgsim_indexer.edge_child import BuildAbandoned, run_child
from imgsim_indexer.errors import StoreError

log = logging.getLogger(__name__)
T = TypeVar("T")

REPLAY_CHUNK_OPS = 8  # journal entries replayed per call on the store's thread
BUILDS = Counter(
    "imgsim_indexer_index_builds", "Qdrant Edge index builds, by outcome.", ["outcome"]
)
BUILD_SECONDS = Histogram(
    "imgsim_indexer_index_build_seconds",
    "A Qdrant Edge index build from copy to switch.",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600),
)
UNINDEXED = Gauge("imgsim_indexer_unindexed_points", "Points searched by scan until a build.")
PENDING = Gauge(
    "imgsim_indexer_points_awaiting_build", "Unindexed points beyond those the last build left."
)
BUILDING = Gauge("imgsim_indexer_index_building", "1 while a Qdrant Edge index build runs.")


class Journal:
    """The writes made to the live shard while a build runs, to replay into the built
    copy. Appended and replayed on the store's thread only."""

    def __init__(self, max_points: int) -> None:
        self.max_points = max_points
        self.points = 0
        self.overflowed = False
        self._ops: list[qe.UpdateOperation] = []
        self._replayed = 0

    def append(self, operation: qe.UpdateOperation, points: int) -> None:
        if self.overflowed:
            return
        self.points += points
        if self.points > self.max_points:
            self.overflowed = True
            self._ops.clear()  # the build is abandoned: free the memory now
        else:
            self._ops.append(operation)

    @property
    def behind(self) -> int:
        return len(self._ops) - self._replayed

    def replay(self, shard: qe.EdgeShard, limit: int | None = None) -> None:
        end = len(self._ops) if limit is None else min(len(self._ops), self._replayed + limit)
        for operation in self._ops[self._replayed : end]:
            shard.update(operation)
        self._replayed = end


class BuildHost(Protocol):
    """What a build needs of the store it builds for (an ``EdgeStore``)."""

    root: Path
    current: str | None
    dim: int
    index: VectorIndexSettings
    writes: asyncio.Lock  # held around each write
    journal: Journal | None  # while set, every write is appended to it

    async def on_shard_thread(self, fn: Callable[..., T], *args: Any) -> T: ...

    def live_shard(self) -> qe.EdgeShard: ...

    def swap_shard(self, shard: qe.EdgeShard) -> qe.EdgeShard:
        """Serve from ``shard`` from now on; return the one it replaces (store's thread)."""
        ...


@dataclass(frozen=True)
class BuildReport:
    points: int
    indexed: int
    copy_s: float
    build_s: float  # the child's load, optimize and flush
    switch_s: float  # load of the built copy, journal replay, switch
    journaled: int  # points written during the build
    total_s: float


class IndexBuilds:
    """Watches one Edge store's shard and builds its index in the background."""

    def __init__(self, host: BuildHost, settings: EdgeBuildSettings) -> None:
        self.host = host
        self.settings = settings
        self.last: BuildReport | None = None
        self._left = 0  # unindexed points the last build left (small segments)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.settings.enabled and self._task is None:
            self._task = asyncio.create_task(self._watch(), name="qdrant-edge-builds")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def pending(self) -> int:
        """Unindexed points beyond those the last build left."""
        info = await self.host.on_shard_thread(lambda: self.host.live_shard().info())
        return _observe(info, self._left)

    async def _watch(self) -> None:
        while True:
            await pause(self.settings.check_s)
            try:
                if await self.pending() >= self.settings.min_points:
                    await self.build()
            except StoreError as exc:
                log.warning("qdrant-edge index build: %s", exc)

    async def build(self) -> BuildReport:
        """Build the index of everything written so far, and switch to it."""
        async with self._lock:
            started = time.perf_counter()
            try:
                with BUILDING.track_inprogress():
                    report = await self._build(started)
            except asyncio.CancelledError:
                BUILDS.labels("cancelled").inc()
                raise
            except BuildAbandoned:
                BUILDS.labels("abandoned").inc()
                raise
            except Exception:
                BUILDS.labels("failed").inc()
                raise
            BUILDS.labels("built").inc()
            BUILD_SECONDS.observe(report.total_s)
            self.last = report
            log.info(
                "qdrant-edge index built: %d points (%d indexed) in %.1f s (copy %.1f s, "
                "build %.1f s, switch %.2f s, %d points written meanwhile)",
                report.points, report.indexed, report.total_s, report.copy_s,
                report.build_s, report.switch_s, report.journaled,
            )  # fmt: skip
            return report

    async def _build(self, started: float) -> BuildReport:
        host, name = self.host, self.host.current
        if name is None:
            raise StoreError("the qdrant-edge store is not open")
        async with host.writes:
            await host.on_shard_thread(lambda: host.live_shard().flush())
            live = setup.live_generation(host.root, name)
            if live is None:
                raise StoreError(f"qdrant-edge shard {name} has no generation link")
            target = setup.next_generation(host.root, name)
            await asyncio.to_thread(shutil.copytree, live, target)
            journal = host.journal = Journal(self.settings.journal_max_points)
        copied = time.perf_counter()
        switched = False
        try:
            await run_child(target, host.dim, host.index, self.settings, lambda: _stopped(journal))
            built_at = time.perf_counter()
            config = setup.edge_config(host.dim, host.index)
            built = await host.on_shard_thread(setup.load_shard, target, config, host.dim)
            try:
                if host.index.on_disk:  # mapped: its pages into the cache before it serves
                    await asyncio.to_thread(setup.read_in, target, lambda: journal.overflowed)
                # What the build itself left unindexed (not what is written meanwhile).
                left = await host.on_shard_thread(_unindexed, built)
                while journal.behind > REPLAY_CHUNK_OPS and not journal.overflowed:
                    await host.on_shard_thread(journal.replay, built, REPLAY_CHUNK_OPS)

                def switch() -> qe.ShardInfo:
                    nonlocal switched
                    if journal.overflowed:
                        raise BuildAbandoned(_stopped(journal))
                    journal.replay(built)
                    built.flush()
                    setup.point_link(host.root / name, target)
                    switched = True
                    host.journal = None
                    old = host.swap_shard(built)
                    try:
                        old.close()
                    except Exception as exc:  # the switch is done; the old files go anyway
                        log.warning("closing the replaced qdrant-edge shard: %s", exc)
                    return built.info()

                info = await host.on_shard_thread(switch)
            finally:
                if not switched:
                    await host.on_shard_thread(built.close)
        finally:
            if not switched:
                host.journal = None
                await asyncio.to_thread(shutil.rmtree, target, True)
        done = time.perf_counter()
        await asyncio.to_thread(shutil.rmtree, live, True)
        self._left = left
        _observe(info, left)
        return BuildReport(
            points=info.points_count,
            indexed=info.indexed_vectors_count,
            copy_s=copied - started,
            build_s=built_at - copied,
            switch_s=done - built_at,
            journaled=journal.points,
            total_s=done - started,
        )


def _unindexed(shard: qe.EdgeShard) -> int:
    info = shard.info()
    return max(0, info.points_count - info.indexed_vectors_count)


def _observe(info: qe.ShardInfo, left: int) -> int:
    """Set the gauges from ``info``; return the points awaiting a build."""
    unindexed = max(0, info.points_count - info.indexed_vectors_count)
    UNINDEXED.set(unindexed)
    PENDING.set(max(0, unindexed - left))
    return unindexed - left


def _stopped(journal: Journal) -> str | None:
    if journal.overflowed:
        return f"more than {journal.max_points} points were written during the build"
    return None
