"""Fixtures: an open store of each implementation (Edge in tmp_path, server in :memory:)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from indexer_samples import DIM, edge_settings
from qdrant_client import AsyncQdrantClient

from imgsim_core.settings import QdrantSettings
from imgsim_indexer.edge_store import EdgeStore
from imgsim_indexer.server_store import ServerStore
from imgsim_indexer.store import VectorStore


@pytest.fixture(params=["edge", "server"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    opened: VectorStore
    if request.param == "edge":
        opened = EdgeStore(edge_settings(tmp_path), DIM)
    else:
        client = AsyncQdrantClient(location=":memory:")
        opened = ServerStore(
            QdrantSettings(url="http://unused", collection="images"), DIM, client=client
        )
    await opened.open()
    yield opened
    await opened.close()
