"""Real components for the cross-service tests: a Kafka broker and a Redis server.

By default the project starts them itself as local processes (Apache Kafka in KRaft mode
from its Maven Central jars, and ``redis-server``) on free ports of 127.0.0.1, once per
test session. With ``IMGSIM_TEST_CONTAINERS=1`` and a reachable Docker engine they come
from testcontainers instead, with a Qdrant server. ``IMGSIM_TEST_QDRANT_URL`` names a
Qdrant server you run yourself, for the tests that need one (they skip without it). Each
test uses its own topic prefix (and collection), so tests never see each other's records.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from imgsim_devstack.processes import KafkaBroker, RedisServer, free_port
from imgsim_gateway.app import create_app
from imgsim_gateway.settings import GatewaySettings


@dataclass(frozen=True)
class Services:
    bootstrap: str
    redis_url: str
    qdrant_url: str | None = None  # a Qdrant server: from containers, or IMGSIM_TEST_QDRANT_URL


def _docker_reachable() -> bool:
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return False
    return True


@asynccontextmanager
async def in_process_gateway(settings: GatewaySettings) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway app in this process, its lifespan running, and a client of it."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=60) as c:
            yield c


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """Kafka and Redis for the whole session, stopped at its end."""
    if os.environ.get("IMGSIM_TEST_CONTAINERS") == "1" and _docker_reachable():
        from testcontainers.core.container import DockerContainer
        from testcontainers.kafka import KafkaContainer
        from testcontainers.redis import RedisContainer

        qdrant = DockerContainer("qdrant/qdrant:v1.19.1").with_exposed_ports(6333)
        with (
            KafkaContainer("apache/kafka:4.4.0").with_kraft() as kafka_box,
            RedisContainer() as redis_box,
            qdrant,
        ):
            host, port = redis_box.get_container_host_ip(), redis_box.get_exposed_port(6379)
            qdrant_url = f"http://{qdrant.get_container_host_ip()}:{qdrant.get_exposed_port(6333)}"
            yield Services(kafka_box.get_bootstrap_server(), f"redis://{host}:{port}/0", qdrant_url)
        return
    base: Path = tmp_path_factory.mktemp("infra")
    kafka = KafkaBroker("kafka", base / "kafka.log", data_dir=base / "kafka", port=free_port())
    redis = RedisServer("redis", base / "redis.log", data_dir=base / "redis", port=free_port())
    try:
        kafka.start()
        redis.start()
        yield Services(kafka.bootstrap, redis.url, os.environ.get("IMGSIM_TEST_QDRANT_URL"))
    finally:
        redis.stop()
        kafka.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A fresh topic prefix per test."""
    return f"t{uuid.uuid4().hex[:10]}."
