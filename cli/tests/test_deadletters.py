"""Dead letters as the CLI reads them: the original record comes back whole."""

from __future__ import annotations

import pytest
from aiokafka import ConsumerRecord

from imgsim_cli.deadletters import DeadLetter, parse_position, select
from imgsim_cli.errors import CliError
from imgsim_core.kafka import dead_letter_record


def rejected(offset: int, reason: str) -> DeadLetter:
    original: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        topic="p.images", partition=3, offset=offset, timestamp=0, timestamp_type=0,
        key=f"img-{offset}".encode(), value=b"\xff\xd8 bytes",
        checksum=None, serialized_key_size=5, serialized_value_size=8,
        headers=(("metadata", b'{"a": 1}'), ("content-type", b"image/jpeg")),
    )  # fmt: skip
    letter = dead_letter_record("p.deadletter", original, reason)
    return DeadLetter(0, offset, letter.key, letter.value, dict(letter.headers))


def test_the_original_record_goes_back_to_its_source_topic() -> None:
    letter = rejected(7, "corrupt_image: cannot be decoded")
    assert (letter.code, letter.source, letter.image_id) == (
        "corrupt_image",
        "p.images 3:7",
        "img-7",
    )
    back = letter.original()
    assert (back.topic, back.key, back.value) == ("p.images", b"img-7", b"\xff\xd8 bytes")
    assert back.headers == [("metadata", b'{"a": 1}'), ("content-type", b"image/jpeg")]


def test_select_by_position_and_code() -> None:
    letters = [rejected(1, "model_error: x"), rejected(2, "corrupt_image: y")]
    assert select(letters, code="model_error") == [letters[0]]
    assert select(letters, ["0:2"]) == [letters[1]]
    assert select(letters) == letters
    with pytest.raises(CliError, match="no dead letter at 0:9"):
        select(letters, ["0:9"])


@pytest.mark.parametrize("text", ["3", "a:1", "1:", ":1", "1:2:3"])
def test_positions_are_partition_colon_offset(text: str) -> None:
    with pytest.raises(CliError):
        parse_position(text)
    assert parse_position("2:40") == (2, 40)
