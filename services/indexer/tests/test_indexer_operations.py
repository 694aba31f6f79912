"""Vectors-topic records → store operations and dead letters (pure, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from aiokafka import ConsumerRecord
from indexer_samples import DIM, unit_vector

from imgsim_core.contracts import ImageEmbedded, Metadata, pack_vector
from imgsim_core.kafka import OutRecord, encode_metadata
from imgsim_core.settings import ImageLimits
from imgsim_core.topics import Header
from imgsim_indexer.operations import Planner

DEADLETTER = "imgsim.deadletter"
NOW = datetime(2025, 6, 1, tzinfo=UTC)
_offsets = iter(range(1_000_000))


def record(
    key: bytes | None, value: bytes | None, headers: tuple[tuple[str, bytes], ...] = ()
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="imgsim.vectors",
        partition=2,
        offset=next(_offsets),
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=headers,
    )


def embedded(image_id: str, seed: int = 0, **changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "image_id": image_id,
        "model_id": "m",
        "dim": DIM,
        "vector": pack_vector(unit_vector(seed)),
        "metadata": {"seed": seed},
        "embedded_at": NOW,
    }
    fields.update(changes)
    return ImageEmbedded(**fields).model_dump_json().encode()


def _with(value: float) -> npt.NDArray[np.float32]:
    """A vector of the index's dimension: a unit vector with ``value`` in its first place."""
    vector = unit_vector(0)
    vector[0] = value
    return vector


def plan(*records: ConsumerRecord[bytes, bytes]) -> Any:
    return Planner(dim=DIM, model_id="m", deadletter_topic=DEADLETTER, now=NOW).plan(records)


def reason(dead: OutRecord) -> str:
    return dict(dead.headers)[Header.REASON].decode()


def test_valid_event_becomes_an_upsert() -> None:
    result = plan(record(b"a", embedded("a", 3)))

    assert result.deletes == []
    assert result.dead_letters == []
    [point] = result.upserts
    assert point.image_id == "a"
    assert point.model_id == "m"
    assert point.metadata == {"seed": 3}
    assert point.indexed_at == NOW
    assert (point.source_partition, point.source_offset) == (None, None)
    np.testing.assert_array_equal(point.vector, unit_vector(3))


def test_upsert_keeps_the_source_offset() -> None:
    result = plan(record(b"a", embedded("a", source_partition=4, source_offset=1234)))

    [point] = result.upserts
    assert (point.source_partition, point.source_offset) == (4, 1234)


def test_tombstone_becomes_a_delete() -> None:
    result = plan(record(b"a", None))

    assert result.deletes == ["a"]
    assert result.upserts == []


@pytest.mark.parametrize(
    ("key", "value", "code"),
    [
        pytest.param(b"a", b"{not json", "bad_json", id="bad-json"),
        pytest.param(b"a", b'{"image_id": "a"}', "bad_event", id="wrong-schema"),
        pytest.param(b"a", embedded("a", dim=DIM * 2), "wrong_dim", id="wrong-dim"),
        pytest.param(b"a", embedded("a", model_id="other"), "unknown_model", id="other-model"),
        pytest.param(b"a", embedded("b"), "key_mismatch", id="key-mismatch"),
        pytest.param(b"", embedded("a"), "empty_key", id="empty-key"),
        pytest.param(None, embedded("a"), "empty_key", id="no-key"),
        pytest.param(b"\xff\xfe", embedded("a"), "bad_key", id="key-not-utf8"),
        pytest.param(
            b"a",
            embedded("a", vector=pack_vector(np.ones(3, np.float32))),
            "bad_vector",
            id="short",
        ),
        pytest.param(
            b"a",
            embedded("a", vector=pack_vector(np.zeros(DIM, np.float32))),
            "bad_vector",
            id="zero",
        ),
        pytest.param(b"a", embedded("a", vector="@@not base64@@"), "bad_vector", id="not-base64"),
        *(
            pytest.param(b"a", embedded("a", vector=pack_vector(_with(bad))), "bad_vector", id=name)
            for name, bad in (("nan", np.nan), ("inf", np.inf), ("minus-inf", -np.inf))
        ),
    ],
)
def test_bad_records_become_dead_letters(key: bytes | None, value: bytes, code: str) -> None:
    bad = record(key, value, headers=(("trace", b"t1"),))

    result = plan(bad, record(b"ok", embedded("ok")))

    assert [p.image_id for p in result.upserts] == ["ok"]  # the rest of the batch goes on
    [dead] = result.dead_letters
    assert dead.topic == DEADLETTER
    assert (dead.key, dead.value) == (key, value)
    assert reason(dead).startswith(f"{code}: ")
    assert result.dead_letter_codes == [code]
    headers = dict(dead.headers)
    assert headers[Header.SOURCE_OFFSET] == str(bad.offset).encode()
    assert headers[Header.SOURCE_PARTITION] == b"2"
    assert headers[f"{Header.ORIGINAL_PREFIX}trace"] == b"t1"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(float(np.finfo(np.float32).max), id="largest-float32"),
        pytest.param(float(np.finfo(np.float32).smallest_subnormal), id="smallest-float32"),
    ],
)
def test_finite_nonzero_vectors_are_kept_whatever_their_scale(value: float) -> None:
    vector = np.zeros(DIM, np.float32)
    vector[0] = value  # alone: a square that float32 could not hold

    result = plan(record(b"a", embedded("a", vector=pack_vector(vector))))

    assert not result.dead_letters
    [point] = result.upserts
    assert np.array_equal(point.vector, vector)


def test_last_operation_per_key_wins() -> None:
    result = plan(
        record(b"a", embedded("a", 1)),
        record(b"b", embedded("b", 2)),
        record(b"a", None),  # a: upsert then delete → delete
        record(b"b", embedded("b", 5)),  # b: two upserts → the later one
        record(b"c", None),
        record(b"c", embedded("c", 7)),  # c: delete then upsert → upsert
    )

    assert result.deletes == ["a"]
    assert {p.image_id: p.metadata for p in result.upserts} == {"b": {"seed": 5}, "c": {"seed": 7}}


def test_a_dead_letter_does_not_undo_an_earlier_operation() -> None:
    result = plan(record(b"a", embedded("a", 1)), record(b"a", b"garbage"))

    assert [p.image_id for p in result.upserts] == ["a"]
    assert len(result.dead_letters) == 1


def metadata_of_size(size: int) -> Metadata:
    """A metadata object whose compact JSON is exactly ``size`` bytes."""
    metadata: Metadata = {"k": ""}
    metadata["k"] = "x" * (size - len(encode_metadata(metadata)))
    assert len(encode_metadata(metadata)) == size
    return metadata


def test_vectors_metadata_is_held_to_the_limit_exactly() -> None:
    limit = ImageLimits().max_metadata_bytes
    at = record(b"at", embedded("at", metadata=metadata_of_size(limit)))
    over = record(b"over", embedded("over", metadata=metadata_of_size(limit + 1)))
    huge = record(b"huge", embedded("huge", metadata=metadata_of_size(5 * 1024 * 1024)))

    result = plan(at, over, huge)

    assert [p.image_id for p in result.upserts] == ["at"]
    assert result.dead_letter_codes == ["metadata_too_large", "metadata_too_large"]
    assert f"the limit is {limit}" in reason(result.dead_letters[0])


def plan_models(*records: ConsumerRecord[bytes, bytes], skip: tuple[str, ...] = ()) -> Any:
    return Planner(
        dim=DIM, model_id="new", older_models=["old"], deadletter_topic=DEADLETTER, now=NOW,
        skip_models=skip,
    ).plan(records)  # fmt: skip


def test_one_pass_plans_the_live_and_the_older_collections() -> None:
    result = plan_models(
        record(b"a", embedded("a", 1, model_id="old")),
        record(b"a", embedded("a", 2, model_id="new")),
        record(b"b", embedded("b", 3, model_id="old")),
        record(b"c", embedded("c", 4, model_id="new")),
        record(b"c", None),  # a tombstone deletes from every collection
        record(b"d", None),
        record(b"d", embedded("d", 5, model_id="new")),  # the old collection keeps the delete
    )
    assert [(p.image_id, p.model_id) for p in result.upserts] == [("a", "new"), ("d", "new")]
    assert result.deletes == ["c"]
    old = result.older["old"]
    assert [(p.image_id, p.model_id) for p in old.upserts] == [("a", "old"), ("b", "old")]
    assert sorted(old.deletes) == ["c", "d"]
    assert result.dead_letters == []


def test_a_model_with_no_collection_is_skipped_or_dead_lettered() -> None:
    skipped = plan_models(record(b"a", embedded("a", model_id="next")), skip=("next",))
    assert (skipped.skipped, skipped.dead_letters, skipped.upserts) == (1, [], [])
    lettered = plan_models(record(b"a", embedded("a", model_id="other")))
    assert lettered.dead_letter_codes == ["unknown_model"]
    assert "'other'" in reason(lettered.dead_letters[0])
    assert lettered.older["old"].upserts == []


def test_the_model_is_judged_before_the_vector() -> None:
    # A vector of an expected model is skipped whatever its dim: its collection judges it.
    result = plan_models(record(b"a", embedded("a", model_id="next", dim=3)), skip=("next",))
    assert (result.skipped, result.dead_letters) == (1, [])
    wrong = plan_models(record(b"a", embedded("a", model_id="old", dim=3)))
    assert wrong.dead_letter_codes == ["wrong_dim"]


def test_a_planner_fed_slices_plans_what_one_step_plans() -> None:
    """The last operation per image id wins across slices too; dead letters keep order."""
    records = [
        record(b"a", embedded("a", 1, model_id="old")),
        record(b"a", embedded("a", 2, model_id="new")),
        record(b"bad", b"{"),
        record(b"c", embedded("c", 4, model_id="new")),
        record(b"x", embedded("x", 6, model_id="unknown")),
        record(b"c", None),  # deletes c in the slice after its upsert
        record(b"d", None),
        record(b"d", embedded("d", 5, model_id="new")),
        record(b"e", embedded("e", 7, model_id="skipped")),
    ]
    whole = plan_models(*records, skip=("skipped",))
    planner = Planner(
        dim=DIM, model_id="new", older_models=["old"], deadletter_topic=DEADLETTER, now=NOW,
        skip_models=("skipped",),
    )  # fmt: skip
    for first in range(0, len(records), 2):
        planner.add(records[first : first + 2])
    sliced = planner.plan()

    def summary(result: Any) -> Any:
        return (
            [(p.image_id, p.model_id, p.metadata) for p in result.upserts],
            result.deletes,
            {
                m: ([p.image_id for p in w.upserts], sorted(w.deletes))
                for m, w in result.older.items()
            },
            result.dead_letter_codes,
            [reason(d) for d in result.dead_letters],
            result.skipped,
        )

    assert summary(sliced) == summary(whole)
    assert summary(sliced)[:2] == ([("a", "new", {"seed": 2}), ("d", "new", {"seed": 5})], ["c"])
    assert whole.dead_letter_codes == ["bad_json", "unknown_model"]
    assert whole.skipped == 1
