"""``imgsim reindex``: start a reindex on the gateway and follow it to its end."""

from __future__ import annotations

import asyncio

from rich.console import Console

from imgsim_cli.client import Gateway
from imgsim_cli.errors import CliError
from imgsim_cli.indexing import progress_bar
from imgsim_core.contracts import ReindexStatus

POLL_S = 0.5
FINISHED = ("done", "failed")


async def follow(
    gateway: Gateway, started: ReindexStatus, console: Console, poll_s: float = POLL_S
) -> ReindexStatus:
    """Poll the status every ``poll_s`` until it is done (returned) or failed (raised)."""
    status = started
    with progress_bar(console, "rec") as progress:
        task = progress.add_task(f"reindex → {status.target or '…'}", total=status.total or None)
        while status.state not in FINISHED:
            await asyncio.sleep(poll_s)
            status = await gateway.reindex_status()
            progress.update(
                task,
                description=f"{status.state} → {status.target or '…'}",
                total=status.total or None,
                completed=status.processed,
                rate=status.rate_per_s,
            )
    if status.state == "failed":
        raise CliError(f"reindex failed: {status.error or 'no reason given'}", "reindex_failed")
    return status
