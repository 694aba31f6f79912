"""``imgsim-devstack``: the local stack in the foreground (``make up``)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType

import typer

from imgsim_devstack.processes import kafka_jars
from imgsim_devstack.stack import LocalStack, StackConfig

app = typer.Typer(add_completion=False, help="Run imgsim locally without Docker.")


@app.command()
def up(
    data_dir: Path = typer.Option(Path("data"), help="Kafka log, vector store, process logs."),
    port: int = typer.Option(8000, help="Gateway port on 127.0.0.1."),
    kafka_port: int = typer.Option(9092),
    redis_port: int = typer.Option(6379),
    weights: str = typer.Option("random", help="pretrained | checkpoint | random"),
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
