"""Background tasks: the one way the services stop them, the pause between the rounds of
their loops, and CPU-bound work over a batch done a slice at a time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


async def in_slices(items: Sequence[T], size: int) -> AsyncIterator[Sequence[T]]:
    """Consecutive slices of ``items``, at most ``size`` each, with a turn of the event
    loop before every slice but the first: work over a batch that holds the loop done a
    slice at a time, so other tasks (a search's handler) wait for a slice, not a batch."""
    for start in range(0, len(items), size):
        if start:
            await asyncio.sleep(0)
        yield items[start : start + size]


async def pause(seconds: float) -> None:
    """The sleep between two rounds of a background loop, which also ends the task when a
    cancellation of it was swallowed during the round.

    Before Python 3.12, ``asyncio.wait_for`` returns the result of an awaitable that
    finished just as the waiting task was cancelled, and the cancellation is lost
    (bpo-42130); redis-py 8 waits for each socket write that way. A loop of Redis calls
    cancelled then went on forever, and so did the ``cancel_and_wait`` that stopped it:
    on Python 3.11 here, 533 of 1,000 cancellations of a task looping on ``GET`` (cancelled
    at random moments) were lost. ``Task.cancelling()`` still counts the request, so the
    loop ends here instead.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    await asyncio.sleep(seconds)


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
