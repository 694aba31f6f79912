from __future__ import annotations

import uuid
from datetime import UTC, datetime

import numpy as np
import pytest
from pydantic import ValidationError

from imgsim_core.contracts import (
    POINT_NAMESPACE,
    ImageEmbedded,
    SearchParams,
    SearchRequested,
    pack_vector,
    point_id,
    unpack_vector,
)
from imgsim_core.topics import Topics


def test_vector_round_trip_is_exact() -> None:
    vector = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    assert np.array_equal(unpack_vector(pack_vector(vector)), vector)
    assert len(pack_vector(vector)) == 4 * 512 * 4 // 3 + (4 - 4 * 512 * 4 // 3 % 4) % 4


def test_point_id_is_stable_and_distinct() -> None:
    assert point_id("a.jpg") == point_id("a.jpg")
    assert point_id("a.jpg") != point_id("b.jpg")
    assert uuid.UUID(point_id("a.jpg")).version == 5


@pytest.mark.parametrize("image_id", ["a.jpg", "img/0", "ü/日本/😀", "x" * 256, "a b\tc"])
def test_point_id_is_the_uuid5_of_the_image_id(image_id: str) -> None:
    # Points written before point_id was spelled out must keep their ids.
    assert point_id(image_id) == str(uuid.uuid5(POINT_NAMESPACE, image_id))


def test_image_embedded_json_round_trip() -> None:
    vector = (np.ones(4) / 2).astype(np.float32)
    event = ImageEmbedded(
        image_id="x",
        model_id="ViT-B-32/test",
        dim=4,
        vector=pack_vector(vector),
        metadata={"tags": ["a", "b"], "n": 3},
        embedded_at=datetime.now(UTC),
    )
    back = ImageEmbedded.model_validate_json(event.model_dump_json())
    assert back == event
    assert np.array_equal(back.array(), vector)


@pytest.mark.parametrize("top_k", [0, 101, -1])
def test_top_k_bounds(top_k: int) -> None:
    with pytest.raises(ValidationError):
        SearchParams(top_k=top_k)


def test_topic_names_follow_the_prefix() -> None:
    topics = Topics("acme.")
    assert topics.images == "acme.images"
    assert topics.vectors == "acme.vectors"
    assert topics.replies("g1") == "acme.replies.g1"
    assert set(topics.compacted) == {"acme.images", "acme.vectors"}


@pytest.mark.parametrize("text", ["", "   ", "\u0085", "\t\n", "\u2003"])
def test_a_text_query_of_only_white_space_is_refused(text: str) -> None:
    with pytest.raises(ValidationError, match=r"empty|at least 1 character"):
        SearchRequested(text=text, deadline_ms=1)
    assert SearchRequested(text=" a ", deadline_ms=1).text == " a "
