"""The ``imgsim`` command line against the three services, a real broker and Redis.

One stack for the module; the commands run in-process through typer's CliRunner (and
once as the installed console script), configured by IMGSIM_* variables as a user would.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from typer.testing import CliRunner, Result

from imgsim_cli.__main__ import app
from imgsim_core.settings import KafkaSettings
from imgsim_embedder.testimages import distinct_image
from tests.conftest import Services
from tests.e2e.conftest import RunningStack as Stack
from tests.e2e.conftest import running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

# Six images under a folder, as (relative path, distinct image number); even n is PNG.
FOLDER = [("a.png", 0), ("b.jpg", 1), ("sub/c.png", 2), ("sub/d.jpg", 3),
          ("sub/deeper/e.png", 4), ("f.jpg", 5)]  # fmt: skip
CORRUPT = "sub/broken.jpg"


def cli_env(stack: Stack) -> dict[str, str]:
    return {
        "IMGSIM_URL": stack.url,
        "IMGSIM_KAFKA__BOOTSTRAP_SERVERS": stack.bootstrap,
        "IMGSIM_KAFKA__TOPIC_PREFIX": stack.prefix,
        "COLUMNS": "250",  # rich tables on one line per row
    }


@pytest.fixture(scope="module")
def stack(infra: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(infra, tmp_path_factory.mktemp("cli")) as running:
        yield running


def imgsim(stack: Stack, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=cli_env(stack))


def get(stack: Stack, image_id: str) -> httpx.Response:
    return httpx.get(f"{stack.url}/api/v1/images/{image_id}", timeout=30)


def rows(output: str) -> list[list[str]]:
    """The body rows of the rich tables in ``output``, as lists of cell texts."""
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in output.splitlines()]
    return [row for row in cells if row and row[0].isdigit()]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for name, n in FOLDER:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(distinct_image(n)[0])
    (root / CORRUPT).write_bytes(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 20)
    (root / "notes.txt").write_text("not an image, skipped by extension")
    return root


@pytest.fixture(scope="module")
def indexed(stack: Stack, folder: Path) -> Result:
    return imgsim(stack, "index", str(folder), "--wait", "--metadata", '{"source": "cli"}')


def test_index_folder_reports_the_corrupt_file_and_indexes_the_rest(
    stack: Stack, indexed: Result
) -> None:
    assert indexed.exit_code == 1, indexed.output
    assert "indexed 6 of 7 images" in indexed.output
    failed = [line for line in indexed.output.splitlines() if "broken.jpg" in line]
    assert len(failed) == 1
    assert "corrupt_image" in failed[0]
    assert "Traceback" not in indexed.output
    for name, _ in FOLDER:
        response = get(stack, name)
        assert response.status_code == 200, (name, response.text)
        assert response.json()["image_id"] == name
        assert response.json()["metadata"] == {"source": "cli"}
    assert get(stack, CORRUPT).status_code == 404


def test_index_direct_to_kafka(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "g.png").write_bytes(distinct_image(20)[0])
    (tmp_path / "x" / "h.jpg").write_bytes(distinct_image(21)[0])
    (tmp_path / "x" / "bad.png").write_bytes(b"plain text, not a PNG")
    result = imgsim(stack, "index", str(tmp_path), "--direct", "--metadata", '{"via": "kafka"}')
    assert result.exit_code == 1, result.output
    assert "indexed 2 of 3 images" in result.output
    bad = [line for line in result.output.splitlines() if "bad.png" in line]
    assert "unsupported_format" in bad[0]

    deadline = time.monotonic() + 60
    for image_id in ("x/g.png", "x/h.jpg"):
        while (response := get(stack, image_id)).status_code == 404:
            assert time.monotonic() < deadline, f"{image_id} was never indexed"
            time.sleep(0.25)
        assert response.status_code == 200, response.text
        assert response.json()["metadata"] == {"via": "kafka"}
    assert get(stack, "x/bad.png").status_code == 404  # checked locally, never sent


def test_search_by_image_finds_it_first(stack: Stack, indexed: Result, folder: Path) -> None:
    result = imgsim(stack, "search", str(folder / "sub" / "c.png"), "--top-k", "3")
    assert result.exit_code == 0, result.output
    table = rows(result.output)
    assert [row[0] for row in table] == ["1", "2", "3"]
    assert table[0][1] == "sub/c.png"
    assert float(table[0][2]) >= 0.99
    assert table[0][3] == '{"source":"cli"}'
    assert "3 results in" in result.output

    bare = imgsim(stack, "search", str(folder / "a.png"), "--top-k", "1", "--no-metadata")
    assert bare.exit_code == 0, bare.output
    assert rows(bare.output)[0][1:2] == ["a.png"]
    assert rows(bare.output)[0][3] == ""


def test_search_by_text_and_like(stack: Stack, indexed: Result) -> None:
    text = imgsim(stack, "search", "--text", "a red square", "--top-k", "5",
                  "--filter", '{"source": "cli"}')  # fmt: skip
    assert text.exit_code == 0, text.output
    found = [row[1] for row in rows(text.output)]
    assert len(found) == 5
    assert set(found) <= {name for name, _ in FOLDER}

    like = imgsim(stack, "search", "--like", "b.jpg", "--top-k", "100")
    assert like.exit_code == 0, like.output
    ids = [row[1] for row in rows(like.output)]
    assert "b.jpg" not in ids
    assert "a.png" in ids

    missing = imgsim(stack, "search", "--like", "no/such.png")
    assert missing.exit_code == 1
    assert "not_found" in missing.output


def test_delete_wait_then_404(stack: Stack, indexed: Result) -> None:
    assert get(stack, "sub/d.jpg").status_code == 200
    result = imgsim(stack, "delete", "sub/d.jpg", "--wait")
    assert result.exit_code == 0, result.output
    assert "sub/d.jpg: deleted" in result.output
    assert get(stack, "sub/d.jpg").status_code == 404


def test_delete_direct_tombstone(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "t.png").write_bytes(distinct_image(30)[0])
    assert imgsim(stack, "index", str(tmp_path / "t.png"), "--wait").exit_code == 0
    assert get(stack, "t.png").status_code == 200
    result = imgsim(stack, "delete", "t.png", "--direct", "--wait")
    assert result.exit_code == 0, result.output
    assert get(stack, "t.png").status_code == 404


def test_stats_with_the_installed_command(stack: Stack, indexed: Result) -> None:
    command = Path(sys.executable).parent / "imgsim"
    env = {**os.environ, **cli_env(stack)}
    result = subprocess.run(
        [str(command), "stats"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "indexed images" in result.stdout
    assert f"{stack.prefix}images" in result.stdout
    assert f"{stack.prefix}vectors" in result.stdout


def test_reindex_follows_to_the_new_collection_then_drops_the_old(
    stack: Stack, indexed: Result, folder: Path
) -> None:
    before = httpx.get(f"{stack.url}/api/v1/stats", timeout=30).json()
    result = imgsim(stack, "reindex")
    assert result.exit_code == 0, result.output
    status = httpx.get(f"{stack.url}/api/v1/admin/reindex", timeout=30).json()
    assert status["state"] == "done"
    assert status["collection"] != before["collection"]
    assert f"reindexed into {status['collection']}" in result.output
    assert status["old_collections"]
    after = httpx.get(f"{stack.url}/api/v1/stats", timeout=30).json()
    assert after["indexed_images"] == before["indexed_images"]
    found = imgsim(stack, "search", str(folder / "a.png"), "--top-k", "1")
    assert found.exit_code == 0, found.output
    assert rows(found.output)[0][1] == "a.png"

    dropped = imgsim(stack, "reindex", "--drop-old")
    assert dropped.exit_code == 0, dropped.output
    assert f"dropped: {', '.join(status['old_collections'])}" in dropped.output


def test_deadletter_list_show_and_replay_round_trip(stack: Stack) -> None:
    images = KafkaSettings(topic_prefix=stack.prefix).topics.images
    truncated = distinct_image(31)[0][:300]  # a valid JPEG header, then nothing
    assert truncated.startswith(b"\xff\xd8")
    headers = [("metadata", b'{"batch": "dl"}'), ("content-type", b"image/jpeg")]

    async def produce() -> None:  # as an upstream producer: no local check
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(images, truncated, key=b"dl/cut.jpg", headers=headers)
        finally:
            await producer.stop()

    def listed(*args: str) -> list[list[str]]:
        deadline = time.monotonic() + 60
        while True:
            result = imgsim(stack, "deadletter", "list", "--code", "corrupt_image", *args)
            assert result.exit_code == 0, result.output
            cells = [
                [c.strip() for c in line.split("│")[1:-1]] for line in result.output.splitlines()
            ]
            found = [r for r in cells if len(r) == 5 and r[1] == "dl/cut.jpg"]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.5)

    asyncio.run(produce())
    [row] = listed()
    position = row[0]
    assert row[2].startswith(f"{images} ")
    assert row[3].startswith("corrupt_image: ")

    shown = imgsim(stack, "deadletter", "show", position)
    assert shown.exit_code == 0, shown.output
    [metadata_line] = [line for line in shown.output.splitlines() if "original-metadata" in line]
    assert '{"batch": "dl"}' in metadata_line
    assert "corrupt_image" in shown.output

    dry = imgsim(stack, "deadletter", "replay", position, "--dry-run")
    assert f"would replay {position} → {images}: dl/cut.jpg" in dry.output
    replayed = imgsim(stack, "deadletter", "replay", position)
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 1 of" in replayed.output

    async def last_image_record() -> ConsumerRecord[bytes, bytes]:
        consumer = AIOKafkaConsumer(
            images, bootstrap_servers=stack.bootstrap, group_id=None, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            batches = await consumer.getmany(timeout_ms=5000)
            records = [r for rs in batches.values() for r in rs if r.key == b"dl/cut.jpg"]
            while len(records) < 2:
                more = await consumer.getmany(timeout_ms=5000)
                assert more, "the replayed record is not on the images topic"
                records += [r for rs in more.values() for r in rs if r.key == b"dl/cut.jpg"]
            return records[-1]
        finally:
            await consumer.stop()

    again = asyncio.run(last_image_record())
    assert again.value == truncated
    assert [(k, v) for k, v in again.headers if k in ("metadata", "content-type")] == headers
    # The embedder sees it again and, the bytes being what they are, letters it again.
    deadline = time.monotonic() + 60
    while len(listed()) < 2:
        assert time.monotonic() < deadline, "the replayed record was not processed again"
        time.sleep(0.5)
    assert imgsim(stack, "deadletter", "replay").exit_code == 1  # nothing named: refused
