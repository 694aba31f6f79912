"""For tests: the worker-thread hops a FastStream handler costs.

fast_depends, under FastStream, resolves each ``Context`` parameter of a handler
(``message: KafkaMessage``, ``broker: KafkaBroker``) with ``anyio.to_thread.run_sync``:
a hop to a worker thread and back for every message. The services' latency-path handlers
take their message from a decoder instead (:mod:`imgsim_core.responders`); their tests
count the hops with :func:`worker_thread_calls`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import anyio.to_thread


@contextlib.contextmanager
def worker_thread_calls() -> Iterator[list[Callable[..., Any]]]:
    """The functions handed to ``anyio.to_thread.run_sync`` while the block runs."""
    calls: list[Callable[..., Any]] = []
    run_sync = anyio.to_thread.run_sync

    async def counted(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(func)
        return await run_sync(func, *args, **kwargs)

    anyio.to_thread.run_sync = counted  # type: ignore[assignment]
    try:
        yield calls
    finally:
        anyio.to_thread.run_sync = run_sync
