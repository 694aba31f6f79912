"""Stopping background tasks: the one way the services do it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel each task that is still running and wait until it has ended.

    ``None`` is skipped. A task's own ``CancelledError`` is swallowed, so a ``stop()``
    that calls this returns normally (a cancellation of the caller itself still
    propagates). A task that had already ended with an error is logged, not raised:
    stopping must go on to stop the rest.
    """
    for task in tasks:
        if task is None:
            continue
        if task.done():
            if not task.cancelled() and (error := task.exception()) is not None:
                log.warning("background task %s had failed: %r", task.get_name(), error)
            continue
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the caller is being cancelled too, not only the task
