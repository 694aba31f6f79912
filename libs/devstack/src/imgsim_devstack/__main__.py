"""``imgsim-devstack``: the local stack in the foreground (``make up``)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from imgsim_devstack.processes import kafka_jars
from imgsim_devstack.stack import LocalStack, StackConfig

app = typer.Typer(add_completion=False, help="Run imgsim locally without Docker.")


@app.command()
def up(
    data_dir: Annotated[Path, typer.Option(help="Kafka log, vector store, logs.")] = Path("data"),
    port: Annotated[int, typer.Option(help="Gateway port on 127.0.0.1.")] = 8000,
    kafka_port: int = 9092,
    redis_port: int = 6379,
    weights: Annotated[str, typer.Option(help="pretrained | checkpoint | random")] = "random",
) -> None:
    """Start Kafka, Redis and the three services; stop them all on Ctrl-C or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = StackConfig(
        data_dir=data_dir,
        kafka_port=kafka_port,
        redis_port=redis_port,
        gateway_port=port,
        model_weights=weights,
    )
    stack = LocalStack(config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        stack.start()
        typer.echo(f"imgsim is up: {stack.gateway_url} (docs: {stack.gateway_url}/docs)")
        typer.echo(f"logs in {data_dir / 'logs'}; Ctrl-C stops everything")
        while not stop.wait(1.0):
            for process in (stack.kafka, stack.redis, *stack.services):
                if not process.alive():
                    typer.echo(f"{process.name} exited; stopping", err=True)
                    stop.set()
    finally:
        stack.stop()
        typer.echo("stopped")


@app.command("fetch-kafka")
def fetch_kafka() -> None:
    """Fetch the Kafka broker jars from Maven Central (done on first use otherwise)."""
    logging.basicConfig(level=logging.INFO)
    typer.echo(str(kafka_jars()))


if __name__ == "__main__":
    app()
