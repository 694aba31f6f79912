"""The gateway client and the tables, against canned answers of the gateway's HTTP API."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from imgsim_cli.client import Gateway
from imgsim_cli.errors import ApiError, CliError
from imgsim_cli.files import ImageFile
from imgsim_cli.indexing import index_files
from imgsim_cli.reindex import follow
from imgsim_cli.responses import Metadata
from imgsim_cli.settings import CliSettings
from imgsim_cli.tables import failures_table, lag_table, search_footer, search_table, stats_table

Handler = Callable[[httpx.Request], httpx.Response]
SEARCH = {
    "results": [
        {"image_id": "cats/1.jpg", "score": 0.98765, "metadata": {"tags": ["cat"], "n": 1}},
        {"image_id": "dogs/2.png", "score": 0.5, "metadata": None},
    ],
    "took_ms": 12.34,
    "cached": True,
}
STATS = {
    "indexed_images": 42,
    "collection": "images-v2",
    "store": "qdrant-edge",
    "model_id": "ViT-B-32/random-seed0",
    "consumer_lag": {
        "imgsim.images": {"group": "imgsim-embedder", "lag": 3},
        "imgsim.vectors": {"group": "imgsim-indexer", "lag": 0},
    },
    "images_in_per_s": 1.5,
    "images_out_per_s": 1.25,
    "dead_letters": 2,
    "searches_in_flight": 0,
    "uptime_s": 10.0,
    "cache": {"result": {"hits": 1, "misses": 4}},
    "some_new_field": "ignored",
}


def gateway(handler: Handler, api_key: str | None = None) -> Gateway:
    settings = CliSettings(url="http://gw.test", api_key=api_key)
    return Gateway(settings, transport=httpx.MockTransport(handler))


def text(*renderables: object) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    for renderable in renderables:
        console.print(renderable)
    return console.export_text()


async def test_search_sends_the_body_and_key_and_renders_a_table() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=SEARCH)

    async with gateway(handler, api_key="k1") as gw:
        response = await gw.search("/search/text", {"query": "a cat", "top_k": 2})
    assert seen[0].url.path == "/api/v1/search/text"
    assert seen[0].headers["X-API-Key"] == "k1"
    assert json.loads(seen[0].content) == {"query": "a cat", "top_k": 2}
    out = text(search_table(response), search_footer(response))
    lines = [line for line in out.splitlines() if "cats/1.jpg" in line or "dogs/2.png" in line]
    assert "1" in lines[0]
    assert "0.9877" in lines[0]
    assert '{"tags":["cat"],"n":1}' in lines[0]
    assert "2" in lines[1]
    assert "0.5000" in lines[1]
    assert "2 results in 12.3 ms (cached)" in out


async def test_error_body_becomes_code_and_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"error": {"code": "not_found", "message": "image 'x' is not indexed"}}
        return httpx.Response(404, json=body)

    async with gateway(handler) as gw:
        with pytest.raises(ApiError) as caught:
            await gw.image("x")
    assert (caught.value.status, caught.value.code) == (404, "not_found")
    assert str(caught.value) == "not_found (404): image 'x' is not indexed"


async def test_an_error_without_the_error_body() -> None:
    async with gateway(lambda r: httpx.Response(502, text="bad gateway")) as gw:
        with pytest.raises(ApiError) as caught:
            await gw.stats()
    assert caught.value.code == "http_502"


async def test_ids_with_slashes_and_odd_characters_are_quoted() -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.raw_path.decode())
        return httpx.Response(202, json={"image_id": "x", "status": "deleted"})

    async with gateway(handler) as gw:
        assert await gw.delete("sub/a #1?.png", wait=True) == "deleted"
    assert paths == ["/api/v1/images/sub/a%20%231%3F.png?wait=true"]


async def test_stats_tables() -> None:
    async with gateway(lambda r: httpx.Response(200, json=STATS)) as gw:
        stats = await gw.stats()
    out = text(stats_table(stats), lag_table(stats))
    assert "indexed images" in out
    assert "42" in out
    assert "result" in out
    assert "1 hits, 4 misses" in out
    embedder = next(line for line in out.splitlines() if "imgsim.images" in line)
    assert "imgsim-embedder" in embedder
    assert embedder.rstrip(" │").endswith("3")


async def test_index_files_collects_failures_with_codes(tmp_path: Path) -> None:
    files = []
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(name.encode())
        files.append(ImageFile(tmp_path / name, name))
    files.append(ImageFile(tmp_path / "gone.png", "gone.png"))

    def handler(request: httpx.Request) -> httpx.Response:
        if b"b.png" in request.content:
            body = {"error": {"code": "corrupt_image", "message": "cannot decode"}}
            return httpx.Response(422, json=body)
        return httpx.Response(202, json={"image_id": "x", "status": "accepted"})

    async with gateway(handler) as gw:

        async def sink(file: ImageFile, data: bytes, metadata: Metadata) -> None:
            await gw.index(file.image_id, file.path.name, data, metadata, wait=False)

        console = Console(file=io.StringIO())
        failures = await index_files(files, sink, {}, concurrency=2, console=console)
    assert [(f.path.name, f.code) for f in failures] == [
        ("b.png", "corrupt_image"),
        ("gone.png", "read_error"),
    ]
    assert "corrupt_image" in text(failures_table(failures))


def reindex_status(state: str, processed: int = 0, **extra: object) -> dict[str, object]:
    return {"state": state, "collection": "images-1", "target": "images-2",
            "processed": processed, "total": 4, **extra}  # fmt: skip


async def test_reindex_is_followed_until_done() -> None:
    answers = iter([reindex_status("running", 2), reindex_status("switching", 4),
                    {**reindex_status("done", 4), "collection": "images-2"}])  # fmt: skip
    methods: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        methods.append(f"{request.method} {request.url.path}")
        if request.method == "POST":
            return httpx.Response(202, json=reindex_status("running"))
        return httpx.Response(200, json=next(answers))

    async with gateway(handler) as gw:
        started = await gw.reindex_start()
        console = Console(file=io.StringIO())
        done = await follow(gw, started, console, poll_s=0.001)
    assert done.collection == "images-2"
    assert methods == ["POST /api/v1/admin/reindex"] + ["GET /api/v1/admin/reindex"] * 3


async def test_reindex_failure_is_an_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=reindex_status("failed", error="disk full"))

    async with gateway(handler) as gw:
        console = Console(file=io.StringIO())
        with pytest.raises(CliError, match="disk full"):
            await follow(gw, await gw.reindex_status(), console, poll_s=0.001)
