"""Liveness of a FastStream worker: its consumer loops run and its handlers finish.

A worker is alive when all three hold:

1. its event loop ticks: a task beats every ``every_s``; a loop blocked by a handler (a
   synchronous call, a native call holding the GIL) stops beating, and after
   ``stale_after_s`` without a beat the worker is dead;
2. every subscriber is running and none of its consume tasks has ended (FastStream
   restarts a loop that failed; one that stopped stays done, and then nothing consumes);
3. no message has been in its handler longer than ``stuck_after_s`` (a handler awaiting
   something that never answers holds its partition forever). The handlers report this
   through :attr:`Liveness.middleware`, which every worker's broker carries.

Before the broker has started the worker is "starting" (not alive yet, for a startup
probe that waits out model loading). :func:`imgsim_core.telemetry.serve_metrics` serves
:meth:`Liveness.check` as ``GET /healthz`` beside ``/metrics``: 200 ``{"status": "alive"}``
or 503 with the reason, read by the images' healthchecks and the Kubernetes probes.
The checks run in the metrics server's thread and read only what the loop wrote.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any

from faststream import BaseMiddleware

from imgsim_core.tasks import cancel_and_wait

STARTING = "starting"


@dataclass(frozen=True)
class Verdict:
    alive: bool
    status: str  # "alive", "starting" or what is wrong


class Liveness:
    """Tracks a worker's event loop, subscribers and in-flight messages."""

    def __init__(
        self, every_s: float = 2.0, stale_after_s: float = 30.0, stuck_after_s: float = 300.0
    ) -> None:
        self.every_s = every_s
        self.stale_after_s = stale_after_s
        self.stuck_after_s = stuck_after_s
        self._broker: Any = None
        self._beat: float | None = None  # monotonic time of the loop's last beat
        self._problem: str | None = None  # what the last beat found wrong, if anything
        self._inflight: dict[int, float] = {}  # message number -> when its handler began
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self.middleware = self._middleware()

    async def start(self, broker: Any) -> None:
        """Start beating for ``broker`` (call after the broker started its subscribers)."""
        self._broker = broker
        self._tick()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="imgsim-liveness")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self._beat = None  # stopping: no longer alive

    def check(self, now: float | None = None) -> Verdict:
        now = time.monotonic() if now is None else now
        with self._lock:
            beat, problem = self._beat, self._problem
            oldest = min(self._inflight.values(), default=None)
        if beat is None:
            return Verdict(False, STARTING)
        if now - beat > self.stale_after_s:
            return Verdict(False, f"event loop blocked for {now - beat:.0f} s")
        if problem is not None:
            return Verdict(False, problem)
        if oldest is not None and now - oldest > self.stuck_after_s:
            return Verdict(False, f"a message has been in its handler for {now - oldest:.0f} s")
        return Verdict(True, "alive")

    def _tick(self) -> None:
        problem = None
        for subscriber in getattr(self._broker, "subscribers", ()):
            topics = ",".join(str(t) for t in getattr(subscriber, "topics", ()) or ()) or "?"
            if not getattr(subscriber, "running", False):
                problem = f"subscriber of {topics} is not running"
                break
            if any(task.done() for task in getattr(subscriber, "tasks", ())):
                problem = f"the consume loop of {topics} has ended"
                break
        with self._lock:
            self._beat, self._problem = time.monotonic(), problem

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            self._tick()

    def _begin(self) -> int:
        number = next(self._numbers)
        with self._lock:
            self._inflight[number] = time.monotonic()
        return number

    def _end(self, number: int) -> None:
        with self._lock:
            self._inflight.pop(number, None)

    def _middleware(self) -> type[BaseMiddleware[Any, Any]]:
        liveness = self

        class HandlerLiveness(BaseMiddleware[Any, Any]):
            """Registers each message (or batch) while its handler runs."""

            async def consume_scope(self, call_next: Any, msg: Any) -> Any:
                number = liveness._begin()
                try:
                    return await call_next(msg)
                finally:
                    liveness._end(number)

        return HandlerLiveness
