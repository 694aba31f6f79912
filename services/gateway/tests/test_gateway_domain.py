"""The gateway's domain pieces without a broker: image checks, the search query's cache
identity, and how the indexer client turns answers (or none) into HTTP errors."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any, cast

import numpy as np
import pytest
from aiokafka.errors import KafkaConnectionError
from PIL import Image

from imgsim_core.contracts import Crop, Example, ImageRecord, ReindexStatus
from imgsim_core.images import ImageError, decode_rgb
from imgsim_core.kafka import Outage
from imgsim_core.requestreply import Requester, RequestTimeoutError
from imgsim_core.settings import ImageLimits, KafkaSettings
from imgsim_gateway.checks import ImageChecks
from imgsim_gateway.errors import (
    BadRequestError,
    InvalidImageError,
    PayloadTooLargeError,
    UpstreamError,
    UpstreamTimeoutError,
)
from imgsim_gateway.indexer import IndexerClient
from imgsim_gateway.kafkastats import Figures, KafkaStats
from imgsim_gateway.searching import Query
from imgsim_gateway.settings import GatewaySettings


def jpeg(width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


CHECKS = ImageChecks(ImageLimits(max_bytes=64 * 1024, max_metadata_bytes=64), 10_000_000)


async def test_a_whole_image_passes_with_its_content_type() -> None:
    assert await CHECKS.image(jpeg()) == "image/jpeg"
    assert await CHECKS.image(jpeg(), Crop(x=0, y=0, w=10, h=10)) == "image/jpeg"


async def test_a_truncated_image_is_a_422_and_an_oversized_one_a_413() -> None:
    with pytest.raises(InvalidImageError) as truncated:
        await CHECKS.image(jpeg()[:200])
    assert truncated.value.status_code == 422
    with pytest.raises(PayloadTooLargeError):
        await CHECKS.image(b"\xff\xd8\xff" + bytes(70 * 1024))


async def test_the_check_refuses_what_the_embedders_decode_refuses() -> None:
    """The check decodes a JPEG at 1/8 scale, the embedder at the scale its model needs:
    truncated and corrupted copies of a photo-like JPEG get the same verdict from both."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    whole = buffer.getvalue()
    damaged = [whole[: int(len(whole) * share)] for share in (0.5, 0.9, 0.99, 0.999)]
    for _ in range(40):
        copy = bytearray(whole)
        for i in rng.integers(1000, len(whole) - 10, 20):
            copy[i] = int(rng.integers(0, 256))
        damaged.append(bytes(copy))
    limits = ImageLimits()
    checks = ImageChecks(limits, 10_000_000)
    verdicts: list[bool] = []
    for data in damaged:
        try:
            decode_rgb(data, limits)
            decodes = True
        except ImageError:
            decodes = False
        try:
            await checks.image(data)
            passes = True
        except InvalidImageError:
            passes = False
        assert passes == decodes
        verdicts.append(passes)
    assert verdicts[:4] == [False] * 4  # the truncated ones
    assert any(verdicts)  # some corrupted copies still decode, at either scale


async def test_a_crop_outside_the_image_is_refused() -> None:
    with pytest.raises(InvalidImageError):
        await CHECKS.image(jpeg(), Crop(x=60, y=0, w=10, h=10))


def test_metadata_is_held_to_its_limit() -> None:
    assert CHECKS.metadata({"a": 1}) == b'{"a":1}'
    with pytest.raises(BadRequestError) as big:
        CHECKS.metadata({"text": "x" * 64})
    assert big.value.code == "metadata_too_large"


def test_the_cache_identity_of_a_query() -> None:
    image = Query(image="Ynl0ZXM=")
    cropped = Query(image="Ynl0ZXM=", crop=Crop(x=0, y=0, w=1, h=1))
    assert image.cache_subject() != cropped.cache_subject()
    assert image.cache_subject() != Query(text="Ynl0ZXM=").cache_subject()
    assert Query(like_image_id="a").cache_subject() is None  # a search by id: no embedding
    one = Query(positive=(Example(image="aGVsbG8="),))
    same = Query(positive=(Example(image="aGVsbG8="),))
    other = Query(positive=(Example(image="aGVsbG8="),), negative=(Example(text="dog"),))
    assert one.cache_subject() == same.cache_subject() != other.cache_subject()
    assert b"aGVsbG8=" not in (one.cache_subject() or b"")  # images count by their hash


def test_which_queries_need_the_embedder() -> None:
    assert Query(image="eA==").needs_embedding
    assert Query(text="a cat").needs_embedding
    assert not Query(like_image_id="a").needs_embedding
    assert not Query(
        positive=(Example(image_id="a"),), negative=(Example(image_id="b"),)
    ).needs_embedding
    assert Query(positive=(Example(image_id="a"),), negative=(Example(text="dog"),)).needs_embedding


class Answers:
    """Stands in for the request/reply round trip: answers with what it is given."""

    def __init__(self, answer: bytes | BaseException) -> None:
        self.answer = answer
        self.pending = 0
        self.asked: list[str] = []

    async def request(self, topic: str, value: bytes, *, timeout_s: float) -> bytes:
        self.asked.append(topic)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def client(answer: bytes | BaseException) -> IndexerClient:
    outage = Outage("Kafka")
    return IndexerClient(GatewaySettings(), cast(Requester, Answers(answer)), outage)


async def test_an_answer_becomes_the_reply_model() -> None:
    record = ImageRecord(image_id="a", found=True).model_dump_json().encode()
    assert (await client(record).lookup("a")).found


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        pytest.param(RequestTimeoutError(), UpstreamTimeoutError, id="no-answer-is-504"),
        pytest.param(KafkaConnectionError(), UpstreamError, id="kafka-down-is-503"),
        pytest.param(b"{not json", UpstreamError, id="malformed-answer-is-503"),
        pytest.param(
            ImageRecord(image_id="a", found=False, error="store down").model_dump_json().encode(),
            UpstreamError,
            id="error-reply-is-503",
        ),
    ],
)
async def test_failed_lookups_become_http_errors(answer: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        await client(answer).lookup("a")


async def test_a_bad_reindex_request_is_the_clients_fault() -> None:
    status = ReindexStatus(state="failed", collection="images", error="bad_request: no")
    with pytest.raises(BadRequestError):
        await client(status.model_dump_json().encode()).reindex("start")


async def test_a_stats_read_that_hangs_fails_and_the_next_caller_reads_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stats = KafkaStats(KafkaSettings(send_timeout_s=0.2), {})
    reads = 0

    async def read() -> Figures:
        nonlocal reads
        reads += 1
        if reads == 1:
            await asyncio.sleep(30)  # a broker that does not answer
        return Figures(lag={}, dead_letters=0, rates=(0.0, 0.0), at=time.monotonic())

    monkeypatch.setattr(stats, "_read", read)
    try:
        with pytest.raises(TimeoutError):
            await stats.read()
        first, second = await asyncio.gather(stats.read(), stats.read())
        assert reads == 2
        assert first is second  # the two callers shared the new read
    finally:
        await stats.stop()  # its clients were never started
