"""The whole local stack: Kafka, Redis and the three services, started in order.

The services are configured through the same environment variables as in production
(see the README); the embedder and the indexer use random weights unless ``--weights``
says otherwise, because this stack must run on machines that cannot download weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from imgsim_devstack.processes import KafkaBroker, RedisServer, ServiceProcess, free_port

log = logging.getLogger(__name__)

# A model's first start converts it for OpenVINO (~20 s here) and, with
# EMBEDDER_MODEL__QUANTIZATION=int8, quantizes it (~50 s more): 92 s to ready on the
# 2-core dev machine. Later starts read both back from the model cache (~3 s).
FIRST_START_S = {"embedder": 300.0}


@dataclass
class StackConfig:
    data_dir: Path = Path("data")
    kafka_port: int = 9092
    redis_port: int = 6379
    gateway_port: int = 8000
    topic_prefix: str = "imgsim."
    partitions: int = 6
    model_weights: str = "random"
    extra_env: dict[str, str] = field(default_factory=dict)


def service_env(config: StackConfig, bootstrap: str, redis_url: str) -> dict[str, dict[str, str]]:
    """Environment of each service, keyed by service name."""
    common = {"PYTHONUNBUFFERED": "1"}
    shared = {
        "KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA__TOPIC_PREFIX": config.topic_prefix,
        "KAFKA__PARTITIONS": str(config.partitions),
    }

    def prefixed(prefix: str, values: dict[str, str]) -> dict[str, str]:
        return {f"{prefix}_{k}": v for k, v in values.items()}

    # The indexer accepts vectors of one model only: the one the embedder loads.
    weights = config.model_weights

    env = {
        "indexer": {
            **common,
            **prefixed("INDEXER", shared),
            "INDEXER_QDRANT__PATH": str((config.data_dir / "qdrant-edge").resolve()),
            "INDEXER_MODEL__WEIGHTS": weights,
            "INDEXER_REDIS__URL": redis_url,
            "INDEXER_METRICS_PORT": str(free_port()),
            "OTEL_SERVICE_NAME": "imgsim-indexer",
        },
        "embedder": {
            **common,
            **prefixed("EMBEDDER", shared),
            "EMBEDDER_MODEL__WEIGHTS": weights,
            "EMBEDDER_METRICS_PORT": str(free_port()),
            "OTEL_SERVICE_NAME": "imgsim-embedder",
        },
        "gateway": {
            **common,
            **prefixed("GATEWAY", shared),
            "GATEWAY_REDIS__URL": redis_url,
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(config.gateway_port),
            # Two processes: one served ~1,560 cached searches/s with wrk, two ~2,560/s.
            "GATEWAY_WORKERS": "2",
            "OTEL_SERVICE_NAME": "imgsim-gateway",
        },
    }
    for values in env.values():
        values.update(config.extra_env)
    return env


def start_services(config: StackConfig, bootstrap: str, redis_url: str) -> list[ServiceProcess]:
    """Start indexer, embedder and gateway together and wait until each is ready.

    They start side by side: none needs another to start (each creates what it consumes
    and waits for Kafka itself), and most of a start is imports, the model and joining
    consumer groups, which overlap. On a failure the ones already started are stopped
    before the error propagates.
    """
    logs = config.data_dir / "logs"
    env = service_env(config, bootstrap, redis_url)
    # Ready: the gateway answers its health route, a worker's /healthz says its consumer
    # loops run (503 "starting" until then).
    health = {
        "gateway": f"http://127.0.0.1:{config.gateway_port}/api/v1/health",
        "indexer": f"http://127.0.0.1:{env['indexer']['INDEXER_METRICS_PORT']}/healthz",
        "embedder": f"http://127.0.0.1:{env['embedder']['EMBEDDER_METRICS_PORT']}/healthz",
    }
    started: list[ServiceProcess] = []
    try:
        for name in ("indexer", "embedder", "gateway"):
            service = ServiceProcess(
                name,
                logs / f"{name}.log",
                module=f"imgsim_{name}",
                env=env[name],
                health_url=health[name],
            )
            started.append(service)
            service.spawn()
        for service in started:
            service.wait_ready(FIRST_START_S.get(service.name, 120.0))
    except BaseException:
        for service in reversed(started):
            service.stop()
        raise
    return started


class LocalStack:
    """Starts everything in order and stops it in reverse, also after a failed start."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        logs = config.data_dir / "logs"
        self.kafka = KafkaBroker(
            "kafka", logs / "kafka.log", data_dir=config.data_dir / "kafka", port=config.kafka_port
        )
        self.redis = RedisServer(
            "redis", logs / "redis.log", data_dir=config.data_dir / "redis", port=config.redis_port
        )
        self.services: list[ServiceProcess] = []

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.config.gateway_port}"

    def start(self) -> None:
        try:
            self.kafka.start()
            self.redis.start()
            self.start_services()
        except BaseException:
            self.stop()
            raise

    def start_services(self) -> None:
        self.services = start_services(self.config, self.kafka.bootstrap, self.redis.url)

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()
        self.services.clear()
        self.redis.stop()
        self.kafka.stop()
