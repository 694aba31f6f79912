"""``imgsim index``: send many files concurrently, with a progress bar, and collect failures."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from imgsim_cli.errors import CliError, ConnectionFailed
from imgsim_cli.files import ImageFile
from imgsim_cli.responses import Metadata


class Sink(Protocol):
    """Where images go: the gateway, or Kafka directly (``--direct``)."""

    async def __call__(self, file: ImageFile, data: bytes, metadata: Metadata) -> None: ...


@dataclass(frozen=True, slots=True)
class Failure:
    path: Path
    code: str
    message: str


class RateColumn(ProgressColumn):
    """Completed items per second (a task's ``rate`` field when the server gives one)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.fields.get("rate") or task.finished_speed or task.speed
        return Text(f"{speed:.1f} {self.unit}/s" if speed else f"? {self.unit}/s", style="cyan")


def progress_bar(console: Console, unit: str) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


async def index_files(
    files: Sequence[ImageFile],
    sink: Sink,
    metadata: Metadata,
    *,
    concurrency: int,
    console: Console,
) -> list[Failure]:
    """Send every file through ``sink``, at most ``concurrency`` at once.

    A file that fails is a :class:`Failure`; a :class:`ConnectionFailed` stops the run,
    since every other file would fail the same way.
    """
    limit = asyncio.Semaphore(concurrency)
    failures: list[Failure] = []

    with progress_bar(console, "img") as progress:
        task = progress.add_task("indexing", total=len(files))

        async def one(file: ImageFile) -> None:
            async with limit:
                try:
                    data = await asyncio.to_thread(file.path.read_bytes)
                    await sink(file, data, metadata)
                except ConnectionFailed:
                    raise
                except CliError as exc:
                    failures.append(Failure(file.path, exc.code, exc.message))
                except OSError as exc:
                    failures.append(Failure(file.path, "read_error", str(exc)))
                finally:
                    progress.advance(task)

        try:
            async with asyncio.TaskGroup() as group:
                for file in files:
                    group.create_task(one(file))
        except ExceptionGroup as errors:
            fatal = errors.subgroup(ConnectionFailed)
            if fatal is None:
                raise
            first = fatal.exceptions[0]
            raise first if isinstance(first, CliError) else fatal from None
    failures.sort(key=lambda f: str(f.path))
    return failures
