"""Record → output logic of the images handler, and query embedding, without Kafka."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from embedder_fakes import FakeEncoder
from PIL import Image

from imgsim_core.contracts import (
    ImageEmbedded,
    Range,
    SearchParams,
    SearchRequested,
    VectorSearchRequested,
    unpack_vector,
)
from imgsim_core.images import ImageError
from imgsim_core.kafka import OutRecord, now_ms
from imgsim_core.settings import ImageLimits
from imgsim_core.topics import CONTRACT_VERSION, Header, Topics
from imgsim_embedder.batcher import MicroBatcher
from imgsim_embedder.embedding import embed_query, embed_records
from imgsim_embedder.preprocessing import PreprocessPool

TOPICS = Topics("t.")
LIMITS = ImageLimits()


def png(red: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (red, 10, 20)).save(buf, format="PNG")
    return buf.getvalue()


def record(
    offset: int,
    key: bytes | None,
    value: bytes | None,
    metadata: bytes | None = None,
    partition: int = 0,
) -> ConsumerRecord[Any, Any]:
    headers = [] if metadata is None else [(Header.METADATA, metadata)]
    return ConsumerRecord(TOPICS.images, partition, offset, 0, 0, key, value, None, 0, 0, headers)


@pytest.fixture
def pool() -> Iterator[PreprocessPool]:
    with PreprocessPool(2) as p:
        yield p


@pytest.fixture
async def fake_batcher() -> AsyncIterator[MicroBatcher]:
    b = MicroBatcher(FakeEncoder(), max_batch=8, max_wait_ms=1)
    b.start()
    yield b
    await b.stop()


async def run(
    records: list[ConsumerRecord[Any, Any]], batcher: MicroBatcher, pool: PreprocessPool
) -> list[OutRecord]:
    return await embed_records(
        records, encoder=batcher.encoder, batcher=batcher, pool=pool, topics=TOPICS, limits=LIMITS
    )


def headers_of(out: OutRecord) -> dict[str, str]:
    return {k: v.decode() for k, v in out.headers}


async def test_a_valid_image_becomes_a_vector(
    fake_batcher: MicroBatcher, pool: PreprocessPool
) -> None:
    [out] = await run(
        [record(7, b"img-1", png(200), b'{"tag":"x"}', partition=3)], fake_batcher, pool
    )
    assert (out.topic, out.key) == (TOPICS.vectors, b"img-1")
    assert out.value is not None
    event = ImageEmbedded.model_validate_json(out.value)
    assert (event.image_id, event.model_id, event.dim) == ("img-1", "fake/test", 4)
    assert event.array().tolist() == [200.0, 0.0, 0.0, 0.0]
    assert event.metadata == {"tag": "x"}
    assert (event.source_partition, event.source_offset) == (3, 7)
    assert headers_of(out)[Header.MODEL_ID] == "fake/test"
    assert headers_of(out)[Header.CONTRACT] == CONTRACT_VERSION


async def test_a_tombstone_passes_through(fake_batcher: MicroBatcher, pool: PreprocessPool) -> None:
    [out] = await run([record(1, b"gone", None)], fake_batcher, pool)
    assert (out.topic, out.key, out.value) == (TOPICS.vectors, b"gone", None)
    assert headers_of(out)[Header.CONTRACT] == CONTRACT_VERSION


@pytest.mark.parametrize(
    ("key", "value", "metadata", "reason"),
    [
        (b"a", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, None, "corrupt_image: "),
        (b"a", b"not an image at all", None, "unsupported_format: "),
        (b"", png(1), None, "empty_key: "),
        (None, None, None, "empty_key: "),
        (b"\xff\xfe", png(1), None, "bad_key: "),
        (b"a", png(1), b"[1, 2]", "bad_metadata: "),
        (b"a", png(1), b"{not json", "bad_metadata: "),
    ],
)
async def test_bad_records_become_dead_letters_with_a_reason(
    fake_batcher: MicroBatcher,
    pool: PreprocessPool,
    key: bytes | None,
    value: bytes | None,
    metadata: bytes | None,
    reason: str,
) -> None:
    [out] = await run([record(42, key, value, metadata)], fake_batcher, pool)
    assert (out.topic, out.key, out.value) == (TOPICS.deadletter, key, value)
    headers = headers_of(out)
    assert headers[Header.REASON].startswith(reason)
    assert headers[Header.SOURCE_OFFSET] == "42"
    assert headers[Header.SOURCE_TOPIC] == TOPICS.images


async def test_outputs_keep_the_input_order(
    fake_batcher: MicroBatcher, pool: PreprocessPool
) -> None:
    records = [
        record(0, b"a", png(10)),
        record(1, b"b", None),
        record(2, b"c", b"garbage"),
        record(3, b"a", png(30)),
        record(4, b"a", None),
    ]
    outs = await run(records, fake_batcher, pool)
    assert [(o.topic, o.key) for o in outs] == [
        (TOPICS.vectors, b"a"),
        (TOPICS.vectors, b"b"),
        (TOPICS.deadletter, b"c"),
        (TOPICS.vectors, b"a"),
        (TOPICS.vectors, b"a"),
    ]
    first, last = (ImageEmbedded.model_validate_json(outs[i].value or b"") for i in (0, 3))
    assert (first.array()[0], last.array()[0]) == (10.0, 30.0)
    assert outs[4].value is None


async def test_a_batch_of_records_goes_to_the_model_a_batch_at_a_time_in_order(
    pool: PreprocessPool,
) -> None:
    """Seven images with a batch of three: passes of three, three and one, and every
    vector in its place; a poisoned image fails its own pass only (whose images are then
    tried alone) and is dead-lettered alone."""
    encoder = FakeEncoder()
    encoder.poison = {50}
    batcher = MicroBatcher(encoder, max_batch=3, max_wait_ms=1)
    batcher.start()
    try:
        values = [10, 20, 30, 40, 50, 60, 70]
        outs = await embed_records(
            [record(i, f"k{i}".encode(), png(v)) for i, v in enumerate(values)],
            encoder=encoder, batcher=batcher, pool=pool, topics=TOPICS, limits=LIMITS,
            model_retries=0,
        )  # fmt: skip
    finally:
        await batcher.stop()
    image_passes = [rows for kind, rows in encoder.calls if kind == "image"]
    assert max(image_passes) <= 3
    assert image_passes[:3] == [3, 3, 1]
    assert sorted(image_passes[3:]) == [1, 1, 1]  # 40, 50 and 60 alone after the failure
    assert [o.key for o in outs] == [f"k{i}".encode() for i in range(7)]
    assert [o.topic for o in outs].count(TOPICS.deadletter) == 1
    assert outs[4].topic == TOPICS.deadletter
    for i in (0, 1, 2, 3, 5, 6):
        assert ImageEmbedded.model_validate_json(outs[i].value or b"").array()[0] == values[i]


def query(**fields: Any) -> SearchRequested:
    return SearchRequested(deadline_ms=now_ms() + 5000, top_k=3, **fields)


async def test_an_image_query_gets_its_vector(
    fake_batcher: MicroBatcher, pool: PreprocessPool
) -> None:
    q = query(image=base64.b64encode(png(99)).decode(), threshold=0.5)
    search = await embed_query(
        q, encoder=fake_batcher.encoder, batcher=fake_batcher, pool=pool, limits=LIMITS
    )
    assert (search.model_id, search.top_k, search.threshold) == ("fake/test", 3, 0.5)
    assert search.deadline_ms == q.deadline_ms
    assert search.vector is not None
    assert base64.b64decode(search.vector)[:4] == b"\x00\x00\xc6\x42"  # 99.0 as <f4


async def test_bulk_images_wait_to_be_decoded_until_a_query_is_embedded(
    fake_batcher: MicroBatcher,
) -> None:
    encoder = fake_batcher.encoder
    assert isinstance(encoder, FakeEncoder)
    encoder.gate.clear()  # the query's forward pass waits here
    with PreprocessPool(2, bulk_wait_s=30) as pool:
        q = query(image=base64.b64encode(png(99)).decode())
        searching = asyncio.create_task(
            embed_query(q, encoder=encoder, batcher=fake_batcher, pool=pool, limits=LIMITS)
        )
        assert await asyncio.to_thread(encoder.entered.wait, 5)
        bulk = pool.bulk(encoder, png(5), LIMITS)
        await asyncio.sleep(0.1)
        assert not bulk.done()  # the query is in its forward pass
        encoder.gate.set()
        assert (await asyncio.wait_for(searching, 5)).vector is not None
        assert float((await asyncio.wait_for(bulk, 5))[0]) == 5.0


async def test_a_text_query_gets_its_text_vector(
    fake_batcher: MicroBatcher, pool: PreprocessPool
) -> None:
    calls = fake_batcher.encoder.calls  # type: ignore[attr-defined]
    before = len(calls)
    search = await embed_query(
        query(text="a red car"),
        encoder=fake_batcher.encoder,
        batcher=fake_batcher,
        pool=pool,
        limits=LIMITS,
    )
    assert search.model_id == "fake/test"
    assert search.like_image_id is None
    assert search.vector is not None
    assert unpack_vector(search.vector).tolist() == [9.0, 1.0, 0.0, 0.0]  # the text tower's
    assert calls[before:] == [("text", 1)]


async def test_every_search_param_is_passed_through(
    fake_batcher: MicroBatcher, pool: PreprocessPool
) -> None:
    q = SearchRequested.model_validate(
        {
            "text": "cat",
            "top_k": 7,
            "threshold": -0.25,
            "include_metadata": False,
            "filter": {"tags": ["cat", "dog"], "year": {"gte": 2020}, "ok": True, "n": 3},
            "deadline_ms": now_ms() + 5000,
        }
    )
    search = await embed_query(
        q, encoder=fake_batcher.encoder, batcher=fake_batcher, pool=pool, limits=LIMITS
    )
    params = set(SearchParams.model_fields)
    assert search.model_dump(include=params) == q.model_dump(include=params)
    assert search.filter == {"tags": ["cat", "dog"], "year": Range(gte=2020), "ok": True, "n": 3}
    # and it survives the trip to the indexer as JSON
    again = VectorSearchRequested.model_validate_json(search.model_dump_json())
    assert again == search


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({}, "bad_request"),
        ({"text": "x", "image": base64.b64encode(png(1)).decode()}, "bad_request"),
        ({"image": "%%% not base64"}, "bad_base64"),
        ({"image": base64.b64encode(b"nope").decode()}, "unsupported_format"),
    ],  # an empty text never parses (imgsim_core.contracts.QueryText): a bad_request reply
)
async def test_bad_queries_raise_with_a_code(
    fake_batcher: MicroBatcher, pool: PreprocessPool, fields: dict[str, str], code: str
) -> None:
    with pytest.raises(ImageError) as info:
        await embed_query(
            query(**fields),
            encoder=fake_batcher.encoder,
            batcher=fake_batcher,
            pool=pool,
            limits=LIMITS,
        )
    assert info.value.code == code


def two_halves(left: int, right: int) -> bytes:
    """A 64×32 PNG whose left half has red ``left`` and right half red ``right``."""
    img = Image.new("RGB", (64, 32), (left, 0, 0))
    img.paste((right, 0, 0), (32, 0, 64, 32))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


async def test_a_crop_embeds_only_its_region(
    fake_batcher: MicroBatcher, pool: PreprocessPool
) -> None:
    image = base64.b64encode(two_halves(50, 200)).decode()
    whole, right = [
        await embed_query(
            query(image=image, **crop), encoder=fake_batcher.encoder, batcher=fake_batcher,
            pool=pool, limits=LIMITS,
        )
        for crop in ({}, {"crop": {"x": 40, "y": 4, "w": 20, "h": 20}})
    ]  # fmt: skip
    # The fake's vector is the red of the region's top-left pixel.
    assert unpack_vector(whole.vector or "")[0] == 50.0
    assert unpack_vector(right.vector or "")[0] == 200.0


async def test_a_crop_outside_the_image_is_refused(
    fake_batcher: MicroBatcher, pool: PreprocessPool
) -> None:
    box = {"x": 20, "y": 0, "w": 20, "h": 5}
    outside = query(image=base64.b64encode(png(1)).decode(), crop=box)
    with pytest.raises(ImageError) as info:
        await embed_query(
            outside, encoder=fake_batcher.encoder, batcher=fake_batcher, pool=pool, limits=LIMITS
        )
    assert info.value.code == "bad_crop"
    assert "32×32" in info.value.message


async def test_examples_are_embedded_in_one_batch_a_kind(
    fake_batcher: MicroBatcher, pool: PreprocessPool
) -> None:
    calls = fake_batcher.encoder.calls  # type: ignore[attr-defined]
    before = len(calls)
    q = query(
        positive=[
            {"image": base64.b64encode(png(30)).decode(), "weight": 2.0},
            {"text": "cat"},
            {"image_id": "known/1.jpg", "weight": 0.5},
            {"image": base64.b64encode(two_halves(60, 90)).decode(),
             "crop": {"x": 32, "y": 0, "w": 32, "h": 32}},
        ],
        negative=[{"text": "a dog"}],
    )  # fmt: skip
    search = await embed_query(
        q, encoder=fake_batcher.encoder, batcher=fake_batcher, pool=pool, limits=LIMITS
    )
    assert (search.vector, search.model_id) == (None, "fake/test")
    vectors = [None if e.vector is None else unpack_vector(e.vector)[0] for e in search.positive]
    assert vectors == [30.0, 3.0, None, 90.0]  # the fake's text vector starts at len(text)
    assert [e.weight for e in search.positive] == [2.0, 1.0, 0.5, 1.0]
    assert search.positive[2].image_id == "known/1.jpg"
    assert all(e.image is None and e.text is None for e in (*search.positive, *search.negative))
    assert unpack_vector(search.negative[0].vector or "")[0] == 5.0
    assert sorted(calls[before:]) == [("image", 2), ("text", 1), ("text", 1)]


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"negative": [{"text": "x"}]}, id="negative-only"),
        pytest.param({"text": "x", "positive": [{"text": "y"}]}, id="text-and-examples"),
    ],
)
async def test_bad_example_queries_are_bad_requests(
    fake_batcher: MicroBatcher, pool: PreprocessPool, fields: dict[str, Any]
) -> None:
    with pytest.raises(ImageError) as info:
        await embed_query(
            query(**fields), encoder=fake_batcher.encoder, batcher=fake_batcher, pool=pool,
            limits=LIMITS,
        )  # fmt: skip
    assert info.value.code == "bad_request"


async def test_a_vector_carries_the_sha256_of_its_bytes(
    fake_batcher: MicroBatcher, pool: PreprocessPool
) -> None:
    data = png(7)
    outs = await run([record(0, b"a", data), record(1, b"b", data)], fake_batcher, pool)

    hashes = {ImageEmbedded.model_validate_json(o.value or b"").content_sha256 for o in outs}
    assert hashes == {hashlib.sha256(data).hexdigest()}
