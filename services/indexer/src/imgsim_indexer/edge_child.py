"""The child process of a Qdrant Edge index build (:mod:`~imgsim_indexer.edge_build`):
``python -m imgsim_indexer.edge_child <shard dir> --dim N --index JSON`` loads a copy of a
shard with the store's configuration, runs its optimizers (the HNSW build), flushes and
closes it. :func:`run_child` is the parent's side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from imgsim_core.settings import EdgeBuildSettings, VectorIndexSettings
from imgsim_indexer import edge_setup as setup
from imgsim_indexer.errors import StoreError

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class BuildAbandoned(StoreError):
    """The build stopped short; the live shard is as it was."""


async def run_child(
    path: Path,
    dim: int,
    index: VectorIndexSettings,
    settings: EdgeBuildSettings,
    stopped: Callable[[], str | None],
) -> None:
    """Run the build of the shard copy at ``path`` in a child process; kill it when
    ``stopped()`` gives a reason, the build times out, or the caller is cancelled."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "imgsim_indexer.edge_child", str(path),
        "--dim", str(dim), "--index", index.model_dump_json(), "--nice", str(settings.nice),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    waited = asyncio.ensure_future(proc.communicate())
    deadline = time.monotonic() + settings.timeout_s
    try:
        while not waited.done():
            await asyncio.wait({waited}, timeout=0.5)
            reason = stopped()
            if reason is not None:
                raise BuildAbandoned(reason)
            if time.monotonic() > deadline:
                raise BuildAbandoned(f"the build took longer than {settings.timeout_s:.0f} s")
        _, stderr = waited.result()  # stdout is not read
    finally:
        if proc.returncode is None:
            proc.kill()
            with contextlib.suppress(Exception):
                await waited
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise StoreError(f"the index build exited with {proc.returncode}: {' | '.join(tail)}")


def main(argv: list[str] | None = None) -> None:
    """The child: build the index of the shard at ``path`` and close it."""
    parser = argparse.ArgumentParser(prog="python -m imgsim_indexer.edge_child")
    parser.add_argument("path", type=Path)
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument("--index", default="{}", help="VectorIndexSettings as JSON")
    parser.add_argument("--nice", type=int, default=0)
    args = parser.parse_args(argv)
    _die_with_parent()
    os.nice(args.nice)
    index = VectorIndexSettings.model_validate_json(args.index)
    started = time.perf_counter()
    shard = setup.load_shard(args.path, setup.edge_config(args.dim, index), args.dim)
    shard.optimize()
    shard.flush()
    info = shard.info()
    shard.close()
    log.info(
        "built %s: %d points, %d indexed, %d segments in %.1f s", args.path,
        info.points_count, info.indexed_vectors_count, info.segments_count,
        time.perf_counter() - started,
    )  # fmt: skip


def _die_with_parent() -> None:
    """On Linux, end with the indexer even when it is killed (a build it cannot use;
    its copy is removed at the next open)."""
    if sys.platform != "linux":
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent ended before the call
        sys.exit(1)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    main()
