"""The three services as processes on the session's Kafka and Redis, for end-to-end tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from imgsim_devstack.processes import ServiceProcess, free_port
from imgsim_devstack.stack import StackConfig, start_services
from tests.conftest import Services


@dataclass
class RunningStack:
    url: str
    prefix: str
    bootstrap: str
    services: list[ServiceProcess]
    data_dir: Path


STORES = ["qdrant-edge", "qdrant-server"]


def store_env(store: str, infra: Services) -> dict[str, str]:
    """The indexer's environment for ``store``: embedded Qdrant Edge (the default), or the
    session's Qdrant server in a fresh collection (skipped where there is none)."""
    if store == "qdrant-edge":
        return {}
    if infra.qdrant_url is None:
        pytest.skip("needs a Qdrant server: IMGSIM_TEST_QDRANT_URL or IMGSIM_TEST_CONTAINERS=1")
    return {
        "INDEXER_QDRANT__URL": infra.qdrant_url,
        "INDEXER_QDRANT__COLLECTION": f"c{uuid.uuid4().hex[:10]}",
    }


@contextmanager
def running_stack(
    infra: Services, data_dir: Path, extra_env: dict[str, str] | None = None
) -> Iterator[RunningStack]:
    """Indexer, embedder and gateway on a fresh topic prefix; all stopped afterwards."""
    config = StackConfig(
        data_dir=data_dir,
        gateway_port=free_port(),
        topic_prefix=f"e{uuid.uuid4().hex[:8]}.",
        partitions=3,
        extra_env=extra_env or {},
    )
    services = start_services(config, infra.bootstrap, infra.redis_url)
    try:
        yield RunningStack(
            f"http://127.0.0.1:{config.gateway_port}",
            config.topic_prefix,
            infra.bootstrap,
            services,
            data_dir,
        )
    finally:
        for service in reversed(services):
            service.stop()
        assert not [s.name for s in services if s.alive()], "a service outlived its stop"


@pytest.fixture
async def client(stack: RunningStack) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the module's ``stack`` fixture."""
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as c:
        yield c
