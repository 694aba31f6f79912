"""cancel_and_wait: running tasks end, ended ones are fine, a failed one is logged; a loop
that pauses between rounds ends even when a round lost its cancellation."""

from __future__ import annotations

import asyncio

import pytest

from imgsim_core.tasks import cancel_and_wait, in_slices, pause


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


async def _swallows_a_cancellation() -> None:
    """What ``asyncio.wait_for`` does before Python 3.12 when what it waits for finishes
    as the task is cancelled: the result is returned, the cancellation is lost."""
    try:
        await asyncio.sleep(0.05)
    except asyncio.CancelledError:
        return


async def test_a_loop_whose_round_lost_its_cancellation_ends_at_its_pause() -> None:
    rounds = 0
    stopped = False  # ends the loop should the cancellation stay lost

    async def loop() -> None:
        nonlocal rounds
        while not stopped:
            rounds += 1
            await _swallows_a_cancellation()
            await pause(0.01)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.02)  # inside a round
    try:
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=5)
    finally:
        stopped = True

    assert done, "the loop went on after its cancellation"
    assert task.cancelled()
    assert rounds == 1


async def test_pause_sleeps_when_no_cancellation_is_pending() -> None:
    started = asyncio.get_running_loop().time()

    await pause(0.05)

    assert asyncio.get_running_loop().time() - started >= 0.045
