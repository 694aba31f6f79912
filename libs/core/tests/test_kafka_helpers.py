from __future__ import annotations

import pytest
from aiokafka import ConsumerRecord
from faststream.kafka.message import KafkaAckableMessage
from faststream.kafka.parser import AioKafkaBatchParser, AioKafkaParser
from hypothesis import given
from hypothesis import strategies as st

from imgsim_core.kafka import (
    EventError,
    batch_records,
    dead_letter_headers,
    dead_letter_record,
    decode_key,
    decode_metadata,
    now_ms,
    past_deadline,
    safe_batch_parser,
)
from imgsim_core.topics import Header


def record(**kw: object) -> ConsumerRecord[bytes, bytes]:
    fields: dict[str, object] = {
        "topic": "imgsim.images", "partition": 2, "offset": 41, "timestamp": 0,
        "timestamp_type": 0, "key": b"k", "value": b"v", "checksum": None,
        "serialized_key_size": 1, "serialized_value_size": 1, "headers": (),
    }  # fmt: skip
    fields.update(kw)
    return ConsumerRecord(**fields)


def test_decode_key() -> None:
    assert decode_key("photos/ä.jpg".encode()) == "photos/ä.jpg"
    for bad, code in [(None, "empty_key"), (b"", "empty_key"), (b"\xff", "bad_key"),
                      (b"a\nb", "bad_key"), (b"x" * 257, "bad_key"),
                      ("a\u00a0b".encode(), "bad_key"), ("a\u200bb".encode(), "bad_key"),
                      (b"a/../b", "bad_key")]:  # fmt: skip
        with pytest.raises(EventError) as err:
            decode_key(bad)
        assert err.value.code == code


def test_decode_metadata() -> None:
    assert decode_metadata(None, 100) == {}
    assert decode_metadata(b'{"a": [1, "x"]}', 100) == {"a": [1, "x"]}
    for bad, code in [(b"[1]", "bad_metadata"), (b"{", "bad_metadata"),
                      (b'{"a": "' + b"x" * 200 + b'"}', "metadata_too_large")]:  # fmt: skip
        with pytest.raises(EventError) as err:
            decode_metadata(bad, 100)
        assert err.value.code == code


@given(st.binary(max_size=300))
def test_decode_metadata_only_raises_event_error(raw: bytes) -> None:
    try:
        result = decode_metadata(raw, 200)
    except EventError:
        return
    assert isinstance(result, dict)


def test_dead_letter_keeps_key_value_and_says_why() -> None:
    rec = record(headers=(("metadata", b"{bad"), ("x", b"\xff")))
    out = dead_letter_record("imgsim.deadletter", rec, "bad_metadata: nope")
    assert (out.topic, out.key, out.value) == ("imgsim.deadletter", b"k", b"v")
    headers = dict(out.headers)
    assert headers["reason"] == b"bad_metadata: nope"
    assert headers["source-topic"] == b"imgsim.images"
    assert headers["source-partition"] == b"2"
    assert headers["source-offset"] == b"41"
    assert headers["original-metadata"] == b"{bad"
    assert dead_letter_headers(rec, "r")["original-x"] == "\ufffd"


async def test_safe_batch_parser_repairs_headers_and_keeps_tombstones() -> None:
    seen: list[tuple[ConsumerRecord[bytes, bytes], ...]] = []

    async def original(records: tuple[ConsumerRecord[bytes, bytes], ...]) -> object:
        seen.append(records)
        for r in records:
            for _, v in r.headers:
                v.decode()  # what FastStream's own parser does
        return records

    records = (record(value=None), record(offset=42, headers=(("h", b"\xfe"),)))
    await safe_batch_parser(records, original)  # type: ignore[arg-type]
    assert seen[0][0].value is None
    assert seen[0][1].headers == (("h", "\ufffd".encode()),)
    assert seen[0][1].offset == 42


async def test_the_batch_decoder_hands_over_the_records_as_they_are() -> None:
    """Not a message per record, and no value tried as JSON (the handlers plan them)."""
    records = (record(value=b'{"image_id": "a"}'), record(offset=42, value=None))
    parsed = await AioKafkaBatchParser(msg_class=KafkaAckableMessage, regex=None).parse_batch(
        records
    )
    decoded = await batch_records(parsed)
    assert decoded == records
    assert decoded[0] is records[0]
    single = await AioKafkaParser(msg_class=KafkaAckableMessage, regex=None).parse_message(
        records[0]
    )
    assert await batch_records(single) == (records[0],)


def test_past_deadline_reads_the_header() -> None:
    assert past_deadline({Header.DEADLINE: str(now_ms() - 1)})
    assert not past_deadline({Header.DEADLINE: str(now_ms() + 60_000)})
    assert not past_deadline({})  # no deadline: the body's decides
    assert not past_deadline({Header.DEADLINE: "soon"})
