"""The benchmarks' synthetic vectors are what the indexer accepts, and clustered."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from imgsim_devstack.vectors import ClusteredVectors, metadata
from imgsim_indexer.operations import Planner


def test_the_same_seed_gives_the_same_unit_vectors_around_the_centres() -> None:
    a, b = ClusteredVectors(seed=3).take(200), ClusteredVectors(seed=3).take(200)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    nearest = (a @ ClusteredVectors(seed=3).centres.T).max(axis=1)
    other = ClusteredVectors(seed=4).take(200) @ ClusteredVectors(seed=3).centres.T
    assert nearest.min() > 0.5, "each vector sits near one of its centres"
    assert other.max(axis=1).mean() < nearest.mean() - 0.3, "another seed's do not"


def test_the_records_are_vectors_topic_records_the_indexer_plans_without_dead_letters() -> None:
    records = list(ClusteredVectors().records(10, 50, model_id="m", partitions=3))
    plan = Planner(
        dim=512, model_id="m", older_models=[], deadletter_topic="dlq",
        now=datetime.now(UTC), skip_models=set(), max_metadata_bytes=1024,
    ).plan(records)  # fmt: skip
    assert plan.dead_letters == []
    assert [p.image_id for p in plan.upserts] == [f"img/{i}" for i in range(10, 60)]
    assert plan.upserts[0].metadata == metadata(10) == {"tag": "t10", "n": 10}
    assert {r.partition for r in records} == {0, 1, 2}
