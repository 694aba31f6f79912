"""Fixtures: an open store of each kind (:func:`indexer_samples.opened_store`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from indexer_samples import STORE_KINDS, opened_store

from imgsim_indexer.store import VectorStore


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    async with opened_store(request.param, tmp_path) as opened:
        yield opened
