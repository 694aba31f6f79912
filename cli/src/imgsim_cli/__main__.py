"""``imgsim``: index, search, delete, stats, reindex and dead letters from the command line."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import JsonValue, TypeAdapter, ValidationError
from rich.console import Console

from imgsim_cli.client import Gateway
from imgsim_cli.errors import CliError
from imgsim_cli.files import IdFrom, ImageFile, duplicate_ids, walk
from imgsim_cli.indexing import Failure, Sink, index_files
from imgsim_cli.reindex import follow
from imgsim_cli.responses import Metadata, SearchResponse, Stats
from imgsim_cli.settings import CliSettings, load_settings
from imgsim_cli.tables import (
    deadletter_details,
    deadletter_table,
    failures_table,
    lag_table,
    reindex_table,
    search_footer,
    search_table,
    stats_table,
)
from imgsim_core.contracts import ReindexStatus

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="imgsim image similarity search: index images, search, delete, stats, reindex.",
)
deadletter_app = typer.Typer(
    no_args_is_help=True,
    help="Dead letters (read straight from Kafka, IMGSIM_KAFKA__*): list, show, replay.",
)
app.add_typer(deadletter_app, name="deadletter")
_OBJECT = TypeAdapter(dict[str, JsonValue])
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class State:
    settings: CliSettings
    out: Console
    err: Console


def _state(ctx: typer.Context) -> State:
    state: State = ctx.ensure_object(State)
    return state


def _fail(err: Console, message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _run(state: State, work: Coroutine[Any, Any, T]) -> T:
    """Run one command's coroutine; an expected failure is one line and exit code 1."""
    try:
        return asyncio.run(work)
    except CliError as exc:
        _fail(state.err, str(exc))


def _json_object(value: str | None, option: str) -> Metadata | None:
    if value is None:
        return None
    try:
        return _OBJECT.validate_json(value)
    except ValidationError:
        raise typer.BadParameter("must be a JSON object", param_hint=option) from None


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option("--url", help="Gateway URL (else IMGSIM_URL).", show_default=False)
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help="API key, sent as X-API-Key (else IMGSIM_API_KEY).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Global options; the environment (IMGSIM_*) supplies what they leave out."""
    err = Console(stderr=True)
    try:
        settings = load_settings(url, api_key)
    except CliError as exc:
        _fail(err, exc.message)
    ctx.obj = State(settings, Console(), err)


@app.command()
def index(
    ctx: typer.Context,
    paths: Annotated[
        list[Path],
        typer.Argument(exists=True, show_default=False, metavar="PATH",
                       help="Image files and folders (recursive; .jpg .jpeg .png .webp .gif "
                       ".bmp)."),
    ],
    id_from: Annotated[
        IdFrom, typer.Option("--id-from", help="Ids of files under a folder: the path relative "
                             "to it, the file name, or the absolute path.")
    ] = IdFrom.RELATIVE,
    metadata: Annotated[
        str | None, typer.Option("--metadata", help="A JSON object stored with every image.")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Requests in flight.")] = 8,
    wait: Annotated[bool, typer.Option("--wait", help="Return once searchable.")] = False,
    direct: Annotated[
        bool, typer.Option("--direct", help="Produce to Kafka's images topic, not the gateway.")
    ] = False,
) -> None:  # fmt: skip
    """Index images; exit code 1 if any file failed (listed at the end)."""
    state = _state(ctx)
    meta = _json_object(metadata, "--metadata") or {}
    files = walk(paths, id_from)
    duplicates = duplicate_ids(files)
    skipped = [f for f in files if f.image_id in duplicates and f.path != duplicates[f.image_id][0]]
    todo = [f for f in files if f not in skipped]
    if not files:
        state.err.print("no image files found", style="yellow")
        return
    failures = _run(state, _index(state, todo, meta, concurrency, wait=wait, direct=direct))
    failures += [
        Failure(f.path, "duplicate_id", f"{f.image_id!r} is also the id of "
                f"{duplicates[f.image_id][0]}")
        for f in skipped
    ]  # fmt: skip
    done = len(files) - len(failures)
    state.out.print(f"indexed {done} of {len(files)} images", highlight=False)
    if failures:
        state.out.print(failures_table(failures))
        raise typer.Exit(1)


async def _index(
    state: State, files: list[ImageFile], meta: Metadata, concurrency: int, *, wait: bool,
    direct: bool,
) -> list[Failure]:  # fmt: skip
    async with Gateway(state.settings) as gateway:
        if not direct:

            async def upload(file: ImageFile, data: bytes, metadata: Metadata) -> None:
                await gateway.index(file.image_id, file.path.name, data, metadata, wait=wait)

            return await index_files(
                files, upload, meta, concurrency=concurrency, console=state.err
            )

        from imgsim_cli.direct import DirectProducer  # aiokafka only when asked for

        async with DirectProducer(state.settings.kafka, state.settings.limits) as producer:

            async def produce(file: ImageFile, data: bytes, metadata: Metadata) -> None:
                sent_at = datetime.now(UTC)
                await producer.index(file.image_id, data, metadata)
                if wait:
                    await gateway.wait_indexed(file.image_id, since=sent_at)

            sink: Sink = produce
            return await index_files(files, sink, meta, concurrency=concurrency, console=state.err)


@app.command()
def search(
    ctx: typer.Context,
    image: Annotated[
        Path | None, typer.Argument(exists=True, dir_okay=False, show_default=False,
                                    help="Query image file.")
    ] = None,
    text: Annotated[str | None, typer.Option("--text", help="Search by text.")] = None,
    like: Annotated[
        str | None, typer.Option("--like", help="More like this indexed image id.")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=100)] = 10,
    threshold: Annotated[
        float | None, typer.Option("--threshold", min=-1.0, max=1.0, help="Minimum score.")
    ] = None,
    filter_: Annotated[
        str | None, typer.Option("--filter", help='Metadata filter, e.g. {"tags": "cat"}.')
    ] = None,
    no_metadata: Annotated[
        bool, typer.Option("--no-metadata", help="Leave metadata out of the results.")
    ] = False,
) -> None:  # fmt: skip
    """Search by IMAGE, by --text or by --like ID (exactly one of them)."""
    state = _state(ctx)
    if sum(x is not None for x in (image, text, like)) != 1:
        raise typer.BadParameter(
            "give exactly one of IMAGE, --text or --like", param_hint="IMAGE | --text | --like"
        )
    body: dict[str, object] = {"top_k": top_k, "include_metadata": not no_metadata}
    if threshold is not None:
        body["threshold"] = threshold
    if filter_ is not None:
        body["filter"] = _json_object(filter_, "--filter")
    if image is not None:
        path = "/search"
        body["image_data"] = base64.b64encode(image.read_bytes()).decode("ascii")
    elif text is not None:
        path, body["query"] = "/search/text", text
    else:
        path, body["image_id"] = "/search/similar", like

    async def work() -> SearchResponse:
        async with Gateway(state.settings) as gateway:
            return await gateway.search(path, body)

    response = _run(state, work())
    state.out.print(search_table(response))
    state.out.print(search_footer(response), highlight=False)


@app.command()
def delete(
    ctx: typer.Context,
    image_id: Annotated[str, typer.Argument(metavar="ID", help="The image id.")],
    wait: Annotated[bool, typer.Option("--wait", help="Return once it is gone.")] = False,
    direct: Annotated[
        bool, typer.Option("--direct", help="Produce a tombstone to Kafka, not via the gateway.")
    ] = False,
) -> None:  # fmt: skip
    """Delete an image (a tombstone through the pipeline)."""
    state = _state(ctx)

    async def work() -> str:
        async with Gateway(state.settings) as gateway:
            if not direct:
                return await gateway.delete(image_id, wait=wait)
            from imgsim_cli.direct import DirectProducer

            async with DirectProducer(state.settings.kafka, state.settings.limits) as producer:
                await producer.delete(image_id)
            if wait:
                await gateway.wait_gone(image_id)
                return "deleted"
            return "accepted"

    state.out.print(f"{image_id}: {_run(state, work())}", highlight=False)


@app.command()
def stats(ctx: typer.Context) -> None:
    """Indexed images, consumer lag per topic, rates, dead letters, caches."""
    state = _state(ctx)

    async def work() -> Stats:
        async with Gateway(state.settings) as gateway:
            return await gateway.stats()

    result = _run(state, work())
    state.out.print(stats_table(result))
    state.out.print(lag_table(result))


@app.command()
def reindex(
    ctx: typer.Context,
    drop_old: Annotated[
        bool, typer.Option("--drop-old", help="Only drop the collections no alias points at.")
    ] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once started.")] = False,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Build from this model's vectors (a model change)."),
    ] = None,
) -> None:  # fmt: skip
    """Rebuild the index from the compacted topics into a new collection, then switch to it."""
    state = _state(ctx)

    async def work() -> ReindexStatus:
        async with Gateway(state.settings) as gateway:
            if drop_old:
                return await gateway.reindex_drop_old()
            started = await gateway.reindex_start(model)
            if no_wait:
                return started
            return await follow(gateway, started, state.err)

    status = _run(state, work())
    if drop_old:
        dropped = ", ".join(status.dropped) or "nothing"
        state.out.print(f"dropped: {dropped}", highlight=False)
    elif no_wait:
        state.out.print(reindex_table(status))
    else:
        state.out.print(f"reindexed into {status.collection}", highlight=False)


if __name__ == "__main__":
    app()


CodeOption = Annotated[
    str | None, typer.Option("--code", help="Only reasons with this code, e.g. model_error.")
]


@deadletter_app.command("list")
def deadletter_list(ctx: typer.Context, code: CodeOption = None) -> None:
    """Every dead letter on the topic: position, image id, source, reason."""
    from imgsim_cli import deadletters

    state = _state(ctx)
    letters = deadletters.select(_run(state, deadletters.read_all(state.settings.kafka)), code=code)
    state.out.print(deadletter_table(letters))


@deadletter_app.command("show")
def deadletter_show(
    ctx: typer.Context,
    position: Annotated[str, typer.Argument(metavar="PARTITION:OFFSET")],
) -> None:
    """One dead letter in full: reason, source, every header."""
    from imgsim_cli import deadletters

    state = _state(ctx)
    letters = _run(state, deadletters.read_all(state.settings.kafka))
    try:
        [letter] = deadletters.select(letters, [position])
    except CliError as exc:
        _fail(state.err, str(exc))
    state.out.print(deadletter_details(letter))


@deadletter_app.command("replay")
def deadletter_replay(
    ctx: typer.Context,
    positions: Annotated[
        list[str] | None,
        typer.Argument(metavar="[PARTITION:OFFSET]...", help="Which; with none, use --all."),
    ] = None,
    code: CodeOption = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead letter (with --code: its)."
                                       )] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be sent.")] = False,
) -> None:  # fmt: skip
    """Send dead letters' original records back to their source topics, after a fix."""
    from imgsim_cli import deadletters

    state = _state(ctx)
    if not positions and not all_:
        _fail(state.err, "name dead letters as PARTITION:OFFSET, or pass --all")
    letters = _run(state, deadletters.read_all(state.settings.kafka))
    try:
        chosen = deadletters.select(letters, positions or (), code)
    except CliError as exc:
        _fail(state.err, str(exc))
    if not dry_run:
        _run(state, deadletters.replay(state.settings.kafka, chosen))
    verb = "would replay" if dry_run else "replayed"
    for letter in chosen:
        state.out.print(f"{verb} {letter.position} → {letter.source_topic}: {letter.image_id}",
                        highlight=False)  # fmt: skip
    state.out.print(f"{verb} {len(chosen)} of {len(letters)} dead letters", highlight=False)
