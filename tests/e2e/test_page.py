"""The search page in a real browser (Debian's Chromium, driven by Playwright) on the stack.

The gateway here needs an API key, so the page is used as a user with a key would: the
401 shows as it is, the key is entered once, then files are indexed by upload and
searched by image, by text and "more like this". A screenshot of the results and one on a
phone-sized screen are saved under ``IMGSIM_ARTIFACTS`` (default ``build/artifacts``).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.conftest import Services
from tests.e2e.conftest import RunningStack, running_stack
from tests.imagegen import make_image

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

KEY = "page-test-key"
ARTIFACTS = Path(os.environ.get("IMGSIM_ARTIFACTS", "build/artifacts"))
# The flags a closed network needs: without them Chromium keeps calling Google's hosts.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def stack(infra: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    env = {"GATEWAY_API_KEYS": KEY}
    with running_stack(infra, tmp_path_factory.mktemp("page"), env) as running:
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = os.environ.get("IMGSIM_CHROMIUM") or shutil.which("chromium")
    if executable is None:
        pytest.fail("no chromium: `make bootstrap` installs Debian's (or set IMGSIM_CHROMIUM)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def _searchable(stack: RunningStack, image_ids: list[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=stack.url, headers={"X-API-Key": KEY}) as client:
        for image_id in image_ids:
            while (await client.get(f"/api/v1/images/{image_id}")).status_code != 200:
                assert time.monotonic() < deadline, f"{image_id} never became searchable"
                await asyncio.sleep(0.2)


async def _cards(page: Page) -> list[str]:
    await expect(page.locator("#search-state")).to_contain_text("results")
    return await page.locator("#results .card .id").all_text_contents()


async def test_index_and_search_from_the_page(
    stack: RunningStack, browser: Browser, tmp_path: Path
) -> None:
    files = [tmp_path / "red.png", tmp_path / "blue.png", tmp_path / "broken.png"]
    files[0].write_bytes(make_image(71, size=320))
    files[1].write_bytes(make_image(72, size=320))
    files[2].write_bytes(b"this is not a PNG")
    page = await browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    await page.goto(stack.url + "/")

    # Without the key, the API's own message shows; with it, the status panel fills in.
    await expect(page.locator("#status-error")).to_contain_text("unauthorized")
    await page.fill("#api-key", KEY)
    await page.click("#key-form button")
    await expect(page.locator("#status-error")).to_be_empty()
    await expect(page.locator('[data-stat="indexed"]')).to_have_text("0")

    await page.set_input_files("#index-files", [str(f) for f in files])
    state = page.locator("#index-state")
    await expect(state).to_have_text("2 of 3 accepted, 1 refused. Done.")
    assert await page.locator("#index-progress").evaluate("p => [p.value, p.max]") == [3, 3]
    refused = await page.locator("#index-errors li").all_text_contents()
    assert len(refused) == 1
    assert refused[0].startswith("broken.png: ")
    assert "unsupported_format" in refused[0]
    await _searchable(stack, ["red.png", "blue.png"])

    # By image: the same picture comes back first, its thumbnail loaded.
    await page.set_input_files("#query-file", str(files[0]))
    await expect(page.locator("#query-preview")).to_be_visible()
    await page.click("#search-form button[type=submit]")
    assert (await _cards(page))[0] == "red.png"
    first = page.locator("#results .card").first
    await expect(first.locator(".score")).to_have_text("score 1.000")
    thumb = first.locator("img")
    await expect(thumb).to_have_attribute("src", re.compile(r"^blob:"))
    assert await thumb.evaluate("img => img.complete && img.naturalWidth") == 256
    await page.screenshot(path=str(ARTIFACTS / "page-results.png"), full_page=True)

    # More like this on the result: the image itself is left out.
    await first.locator(".more").click()
    await expect(page.locator("#search-state")).to_contain_text("like red.png")
    assert await _cards(page) == ["blue.png"]

    # By text: both images are candidates (random weights rank them arbitrarily).
    await page.fill("#query-text", "a colourful pattern")
    await page.press("#query-text", "Enter")
    await expect(page.locator("#search-state")).to_contain_text("for “a colourful pattern”")
    assert sorted(await _cards(page)) == ["blue.png", "red.png"]

    # A filter with no match answers with no results, not an error.
    await page.click("#add-filter")
    await page.fill(".filter-row .f-key", "colour")
    await page.fill(".filter-row .f-value", "green")
    await page.press("#query-text", "Enter")
    await expect(page.locator("#search-state")).to_contain_text("0 results")
    await expect(page.locator("#search-error")).to_be_empty()

    # The same bytes again under another name: accepted, and said to be present already.
    copy = tmp_path / "copy" / "red-again.png"
    copy.parent.mkdir()
    copy.write_bytes(files[0].read_bytes())
    await page.set_input_files("#index-files", str(copy))
    await expect(state).to_have_text("1 of 1 accepted, 1 already present under another id. Done.")
    assert await page.locator("#index-notes li").all_text_contents() == [
        "red-again.png: already present as red.png"
    ]
    assert problems == []


async def test_the_page_fits_a_phone_screen(stack: RunningStack, browser: Browser) -> None:
    page = await browser.new_page(viewport={"width": 390, "height": 844})
    await page.goto(stack.url + "/")
    width = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page is wider than the screen: {width}"
    for control in ("#api-key", "#query-text", "#top-k", "#index-metadata"):
        box = await page.locator(control).bounding_box()
        assert box is not None, control
        assert 0 <= box["x"] <= box["x"] + box["width"] <= 390, control
    await page.screenshot(path=str(ARTIFACTS / "page-phone.png"), full_page=True)
