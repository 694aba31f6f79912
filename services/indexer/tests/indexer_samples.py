"""Points, vectors and settings the indexer's tests put in a store."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from imgsim_core.contracts import Metadata, Vector
from imgsim_core.settings import ModelSettings, QdrantSettings
from imgsim_indexer.payload import Point

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
