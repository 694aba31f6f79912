"""Argument validation and errors, through typer's CliRunner (no gateway needed)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imgsim_cli.__main__ import app

runner = CliRunner()


@pytest.fixture
def closed_url() -> str:
    """A port on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    "args",
    [
        ["search"],
        ["search", "--text", "a cat", "--like", "x"],
        ["search", "--like", "x", "--text", "y"],
    ],
)
def test_search_needs_exactly_one_query(args: list[str]) -> None:
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "exactly one of IMAGE, --text or --like" in result.output


def test_search_image_and_text_is_a_usage_error(tmp_path: Path) -> None:
    image = tmp_path / "q.png"
    image.write_bytes(b"x")
    result = runner.invoke(app, ["search", str(image), "--text", "a"], env={"COLUMNS": "200"})
    assert result.exit_code == 2


@pytest.mark.parametrize(
    "args",
    [
        ["search", "--text", "a", "--top-k", "0"],
        ["search", "--text", "a", "--top-k", "101"],
        ["search", "--text", "a", "--threshold", "2"],
        ["search", "--text", "a", "--filter", "[1]"],
        ["search", "--text", "a", "--filter", "{not json"],
        ["index", "--concurrency", "0", "."],
        ["index", "--id-from", "stem", "."],
        ["index", "--metadata", "[1, 2]", "."],
        ["index", "/no/such/folder"],
        ["index"],
        ["delete"],
    ],
)
def test_bad_arguments_exit_2(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output


def test_connection_refused_is_one_line_naming_the_url(closed_url: str) -> None:
    result = runner.invoke(app, ["--url", closed_url, "stats"], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert f"cannot connect to the gateway at {closed_url}" in result.output
    assert "Traceback" not in result.output
    assert result.output.count("\n") == 1


def test_url_from_the_environment(closed_url: str) -> None:
    result = runner.invoke(
        app, ["search", "--text", "x"], env={"IMGSIM_URL": closed_url, "COLUMNS": "200"}
    )
    assert result.exit_code == 1
    assert closed_url in result.output


def test_invalid_setting_names_the_variable() -> None:
    result = runner.invoke(app, ["stats"], env={"IMGSIM_TIMEOUT_S": "soon", "COLUMNS": "200"})
    assert result.exit_code == 1
    assert "IMGSIM_TIMEOUT_S" in result.output


def test_index_with_no_images_found(tmp_path: Path, closed_url: str) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    result = runner.invoke(app, ["--url", closed_url, "index", str(tmp_path)])
    assert result.exit_code == 0
    assert "no image files found" in result.output
