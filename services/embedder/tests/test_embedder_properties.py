"""Property-based tests of the record → outputs logic (:func:`embed_records`).

Whatever the keys, headers and values of a batch, every record yields exactly one output,
in input order (so per key too): a vector, a tombstone, or a dead letter with a reason;
nothing raises. The fake encoder keeps each example fast.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from embedder_fakes import FakeEncoder
from hypothesis import event, given, settings
from hypothesis import strategies as st
from PIL import Image

from imgsim_core.contracts import ImageEmbedded
from imgsim_core.kafka import OutRecord
from imgsim_core.settings import ImageLimits
from imgsim_core.topics import CONTRACT_VERSION, Header, Topics
from imgsim_embedder.batcher import MicroBatcher
from imgsim_embedder.embedding import embed_records
from imgsim_embedder.preprocessing import PreprocessPool

TOPICS = Topics("p.")
LIMITS = ImageLimits(max_metadata_bytes=256)


def png(red: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (red, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


VALID_IMAGES = [png(r) for r in (0, 17, 128, 255)]
MAGIC = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"RIFF\0\0\0\0WEBP"]

good_keys = st.one_of(
    st.sampled_from([b"a", b"b", b"c"]),  # repeated keys, to check per-key order
    st.text(st.characters(categories=["L", "N", "P", "S"]), min_size=1, max_size=50).map(
        str.encode
    ),
)
bad_keys = st.one_of(
    st.none(),
    st.just(b""),
    st.text(min_size=1, max_size=300).map(str.encode),  # control characters, too long
    st.binary(max_size=40),  # often not UTF-8
)
keys = st.one_of(good_keys, good_keys, bad_keys)
values = st.one_of(
    st.none(),
    st.sampled_from(VALID_IMAGES),
    st.sampled_from(VALID_IMAGES),
    st.binary(max_size=200),
    st.tuples(st.sampled_from(MAGIC), st.binary(max_size=200)).map(b"".join),  # fuzz PIL
    st.sampled_from(VALID_IMAGES).flatmap(  # a truncated real image
        lambda img: st.integers(0, len(img) - 1).map(lambda n: img[:n])
    ),
)
json_objects = st.dictionaries(
    st.text(max_size=8),
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
    max_size=4,
).map(lambda d: json.dumps(d).encode())
metadata_values = st.one_of(
    json_objects,
    st.binary(max_size=300),  # often not UTF-8, or not JSON, or over the limit
    st.just(b'"a string"'),
    st.just(b""),
)
header_lists = st.lists(
    st.one_of(
        st.tuples(st.just(Header.METADATA), metadata_values),
        st.tuples(st.text(max_size=10), st.binary(max_size=20)),
    ),
    max_size=4,
)
batches = st.lists(st.tuples(keys, values, header_lists), max_size=12)


@pytest.fixture(scope="module")
def pool() -> Iterator[PreprocessPool]:
    with PreprocessPool(2) as p:
        yield p


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    """A private event loop (never installed as the current one) for the sync tests."""
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as r:
        yield r


def records_of(
    batch: Sequence[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]],
) -> list[ConsumerRecord[Any, Any]]:
    return [
        ConsumerRecord(TOPICS.images, i % 3, 100 + i, 0, 0, k, v, None, 0, 0, h)
        for i, (k, v, h) in enumerate(batch)
    ]


async def embed(records: list[ConsumerRecord[Any, Any]], pool: PreprocessPool) -> list[OutRecord]:
    batcher = MicroBatcher(FakeEncoder(), max_batch=8, max_wait_ms=0)
    batcher.start()
    try:
        return await embed_records(
            records,
            encoder=batcher.encoder,
            batcher=batcher,
            pool=pool,
            topics=TOPICS,
            limits=LIMITS,
        )
    finally:
        await batcher.stop()


@settings(max_examples=150, deadline=None)
@given(batch=batches)
def test_every_record_yields_exactly_one_output_in_order(
    runner: asyncio.Runner,
    pool: PreprocessPool,
    batch: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]],
) -> None:
    records = records_of(batch)
    outs = runner.run(embed(records, pool))

    assert len(outs) == len(records)
    for record, out in zip(records, outs, strict=True):
        assert out.key == record.key  # same position, same key: per-key order holds
        headers = dict(out.headers)
        if out.topic == TOPICS.deadletter:
            assert headers[Header.REASON].decode().strip(), "a dead letter says why"
            event("dead letter: " + headers[Header.REASON].decode().split(":")[0])
            assert out.value == record.value
            assert headers[Header.SOURCE_OFFSET] == str(record.offset).encode()
            assert headers[Header.SOURCE_PARTITION] == str(record.partition).encode()
        elif out.value is None:  # a tombstone: a valid key with a null value
            assert out.topic == TOPICS.vectors
            assert record.value is None
            assert headers[Header.CONTRACT] == CONTRACT_VERSION.encode()
            event("tombstone")
        else:
            assert out.topic == TOPICS.vectors
            embedded = ImageEmbedded.model_validate_json(out.value)
            assert embedded.image_id.encode() == record.key
            assert (embedded.source_partition, embedded.source_offset) == (
                record.partition,
                record.offset,
            )
            assert record.value is not None
            assert embedded.dim == len(embedded.array()) == 4
            event("vector")


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_valid_records_always_become_vectors(
    runner: asyncio.Runner, pool: PreprocessPool, data: st.DataObject
) -> None:
    n = data.draw(st.integers(0, 10))
    reds = data.draw(st.lists(st.sampled_from([0, 17, 128, 255]), min_size=n, max_size=n))
    image_keys = data.draw(
        st.lists(st.sampled_from([b"x", b"y", "ü/ö.jpg".encode()]), min_size=n, max_size=n)
    )
    metadata = data.draw(
        st.lists(json_objects.filter(lambda b: len(b) <= 256), min_size=n, max_size=n)
    )
    batch = [
        (k, png(r), [(Header.METADATA, m)])
        for k, r, m in zip(image_keys, reds, metadata, strict=True)
    ]
    outs = runner.run(embed(records_of(batch), pool))
    assert [o.topic for o in outs] == [TOPICS.vectors] * n
    events = [ImageEmbedded.model_validate_json(o.value or b"") for o in outs]
    assert [e.array()[0] for e in events] == [float(r) for r in reds]
    assert [e.metadata for e in events] == [json.loads(m) for m in metadata]
