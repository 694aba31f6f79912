"""Points, vectors and settings the indexer's tests put in a store, and the stores.

:func:`opened_store` opens one of :data:`STORE_KINDS`: Qdrant Edge in ``tmp_path``;
``ServerStore`` on qdrant-client's ``:memory:`` local mode (which ignores payload
indexes); and ``ServerStore`` on a real Qdrant server where ``IMGSIM_TEST_QDRANT_URL``
names one (skipped otherwise), in a fresh collection dropped at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import AsyncQdrantClient

from imgsim_core.contracts import Metadata, Vector
from imgsim_core.settings import ModelSettings, QdrantSettings
from imgsim_indexer.edge_store import EdgeStore
from imgsim_indexer.payload import PayloadIndexes, Point
from imgsim_indexer.server_store import ServerStore
from imgsim_indexer.store import VectorStore

DIM = 16
MODEL = ModelSettings(weights="random")  # the model the handler tests' indexer holds


def unit_vector(seed: int, dim: int = DIM) -> Vector:
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    normalised: Vector = vector / np.linalg.norm(vector)
    return normalised


def make_point(image_id: str, seed: int, metadata: Metadata | None = None) -> Point:
    return Point(
        image_id=image_id,
        vector=unit_vector(seed),
        model_id="test-model",
        metadata=metadata if metadata is not None else {"seed": seed},
        indexed_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def edge_settings(tmp_path: Path) -> QdrantSettings:
    return QdrantSettings(path=tmp_path / "edge", collection="images")


STORE_KINDS = ["edge", "server", "qdrant"]
QDRANT_URL = os.environ.get("IMGSIM_TEST_QDRANT_URL")


@asynccontextmanager
async def opened_store(
    kind: str, tmp_path: Path, payload_indexes: PayloadIndexes | None = None
) -> AsyncIterator[VectorStore]:
    """An open store of ``kind`` (one of :data:`STORE_KINDS`), closed (and dropped) after."""
    store: VectorStore
    client: AsyncQdrantClient | None = None
    if kind == "edge":
        store = EdgeStore(edge_settings(tmp_path), DIM, payload_indexes=payload_indexes)
    else:
        if kind == "server":
            client, settings = (
                AsyncQdrantClient(location=":memory:"),
                QdrantSettings(url="http://unused", collection="images"),
            )
        elif QDRANT_URL is None:
            pytest.skip("a real Qdrant server only where IMGSIM_TEST_QDRANT_URL names one")
        else:
            client = AsyncQdrantClient(url=QDRANT_URL, check_compatibility=False)
            settings = QdrantSettings(url=QDRANT_URL, collection=f"t{uuid.uuid4().hex[:10]}")
        store = ServerStore(settings, DIM, client=client, payload_indexes=payload_indexes)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        if client is not None:
            if kind == "qdrant":
                for c in (await client.get_collections()).collections:
                    if c.name.startswith(f"{store.collection}_v"):
                        await client.delete_collection(c.name)
            await client.close()
