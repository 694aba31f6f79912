"""Concurrent decodes share one pixel budget, so their memory is bounded."""

from __future__ import annotations

import asyncio

import pytest

from imgsim_core.images import ImageInfo, decoded_pixels
from imgsim_gateway.checks import PixelBudget


async def test_decodes_wait_for_their_share_in_arrival_order() -> None:
    budget = PixelBudget(100)
    peak = 0
    order: list[str] = []
    release = asyncio.Event()

    async def decode(name: str, pixels: int) -> None:
        nonlocal peak
        async with budget.hold(pixels):
            order.append(name)
            peak = max(peak, budget.used)
            await release.wait()

    tasks = [asyncio.create_task(decode(n, p)) for n, p in [("a", 60), ("b", 60), ("c", 10)]]
    await asyncio.sleep(0.01)
    assert order == ["a"]  # b does not fit; c waits behind b (first come, first served)
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "c"]
    assert peak <= 100
    assert budget.used == 0


async def test_an_image_over_the_whole_budget_runs_alone() -> None:
    budget = PixelBudget(100)
    async with budget.hold(10_000):
        assert budget.used == 100
    assert budget.used == 0


async def test_a_cancelled_waiter_gives_its_place_back() -> None:
    budget = PixelBudget(100)
    async with budget.hold(80):
        waiter = asyncio.create_task(budget.hold(50).__aenter__())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert budget.used == 0
    async with budget.hold(100):
        assert budget.used == 100


@pytest.mark.parametrize(
    ("info", "pixels"),
    [
        (ImageInfo("PNG", 7000, 7000), 49_000_000),
        (ImageInfo("JPEG", 300, 200), 300 * 200),  # too small to draft
        (ImageInfo("JPEG", 640, 480), 640 * 480 // 4),  # 480 // 224 = 2: half each side
        (ImageInfo("JPEG", 4000, 3000), 4000 * 3000 // 64),  # 1/8 of each side
        (ImageInfo("JPEG", 1400, 1000), 1400 * 1000 // 16),  # 1000 // 224 = 4
    ],
)
def test_decoded_pixels_follow_the_draft_decode(info: ImageInfo, pixels: int) -> None:
    assert decoded_pixels(info) == pixels
