"""cancel_and_wait: running tasks end, ended ones are fine, a failed one is logged."""

from __future__ import annotations

import asyncio

import pytest

from imgsim_core.tasks import cancel_and_wait, in_slices


async def test_running_tasks_are_cancelled_and_awaited() -> None:
    started = asyncio.Event()
    cleaned = []

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(True)  # runs before cancel_and_wait returns

    task = asyncio.create_task(forever())
    await started.wait()
    await cancel_and_wait(task, None)
    assert task.cancelled()
    assert cleaned == [True]


async def test_ended_tasks_are_fine_and_a_failure_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def ok() -> int:
        return 1

    async def fails() -> None:
        raise RuntimeError("boom")

    done, failed = asyncio.create_task(ok()), asyncio.create_task(fails(), name="crashy")
    await asyncio.wait([done, failed])
    await cancel_and_wait(done, failed)  # raises nothing
    assert "crashy had failed: RuntimeError('boom')" in caplog.text


async def test_the_callers_own_cancellation_still_propagates() -> None:
    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(10)  # ignores the first cancel for a while

    inner = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    outer = asyncio.create_task(cancel_and_wait(inner))
    for _ in range(3):  # outer cancels inner; inner reaches its slow finally
        await asyncio.sleep(0)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    inner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await inner


async def test_in_slices_lets_other_tasks_run_between_slices() -> None:
    events: list[str] = []

    async def other() -> None:
        for _ in range(3):
            events.append("other")
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    async for part in in_slices(list(range(7)), 3):
        events.append(f"slice {list(part)}")
    await task

    slices = [e for e in events if e.startswith("slice")]
    assert slices == ["slice [0, 1, 2]", "slice [3, 4, 5]", "slice [6]"]
    # the first slice runs at once; the other task runs before each later one
    assert events[:4] == ["slice [0, 1, 2]", "other", "slice [3, 4, 5]", "other"]
