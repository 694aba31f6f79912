"""The whole API and every image's lifecycle on the three services, real broker and Redis.

One stack per module (the services take ~20 s to start); each test uses its own image ids.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from PIL import Image
from redis.asyncio import Redis

from imgsim_core.contracts import ImageEmbedded, pack_vector
from imgsim_core.settings import KafkaSettings, RedisSettings
from imgsim_devstack.processes import free_port
from imgsim_embedder.testimages import distinct_image
from imgsim_gateway.settings import GatewaySettings
from tests.conftest import Services, in_process_gateway
from tests.e2e.conftest import RunningStack as Stack
from tests.e2e.conftest import running_stack
from tests.imagegen import make_image

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(infra: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    indexes = {"INDEXER_PAYLOAD_INDEXES": '{"tags": "keyword", "year": "integer"}'}
    with running_stack(infra, tmp_path_factory.mktemp("lifecycle"), indexes) as running:
        yield running


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image(n: int) -> bytes:
    return distinct_image(n)[0]


def uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


async def index(
    client: httpx.AsyncClient, image_id: str, n: int, metadata: dict[str, object]
) -> None:
    response = await client.post(
        "/api/v1/index?wait=true",
        json={"image_data": b64(image(n)), "image_id": image_id, "metadata": metadata},
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["image_id"], body["status"], body["success"]) == (image_id, "indexed", True)
    assert body["message"] == f"image {image_id!r} is searchable"


async def test_index_get_replace_delete(client: httpx.AsyncClient) -> None:
    image_id = uid("life/cycle.png")
    await index(client, image_id, 1, {"v": 1})
    got = await client.get(f"/api/v1/images/{image_id}")
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["indexed"] is True
    assert body["metadata"] == {"v": 1}
    assert body["model_id"] == "ViT-B-32/random-seed0"
    assert datetime.fromisoformat(body["indexed_at"]) <= datetime.now(UTC)
    count = (await client.get("/api/v1/stats")).json()["indexed_images"]

    await index(client, image_id, 2, {"v": 2})  # same id: replaces
    assert (await client.get(f"/api/v1/images/{image_id}")).json()["metadata"] == {"v": 2}
    assert (await client.get("/api/v1/stats")).json()["indexed_images"] == count
    found = await client.post("/api/v1/search", json={"image_data": b64(image(2)), "top_k": 1})
    assert found.json()["results"][0]["image_id"] == image_id

    deleted = await client.delete(f"/api/v1/images/{image_id}?wait=true")
    assert deleted.status_code == 202
    assert deleted.json() == {"image_id": image_id, "status": "deleted"}
    missing = await client.get(f"/api/v1/images/{image_id}")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert (await client.get("/api/v1/stats")).json()["indexed_images"] == count - 1
    after = await client.post("/api/v1/search", json={"image_data": b64(image(2)), "top_k": 100})
    assert image_id not in [r["image_id"] for r in after.json()["results"]]


async def test_multipart_upload(client: httpx.AsyncClient) -> None:
    image_id = uid("upload")
    response = await client.post(
        "/api/v1/images?wait=true",
        files={"file": ("x.png", image(3), "image/png")},
        data={"image_id": image_id, "metadata": json.dumps({"source": "upload"})},
    )
    assert response.status_code == 202, response.text
    assert (await client.get(f"/api/v1/images/{image_id}")).json()["metadata"] == {
        "source": "upload"
    }
    bad = await client.post(
        "/api/v1/images",
        files={"file": ("x.png", image(3), "image/png")},
        data={"image_id": image_id, "metadata": "[1, 2]"},
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_metadata"


async def test_batch_one_bad_item_does_not_fail_the_others(client: httpx.AsyncClient) -> None:
    ids = [uid("batch") for _ in range(3)]
    items = [
        {"image_data": b64(image(4)), "image_id": ids[0]},
        {"image_data": b64(b"not an image at all"), "image_id": ids[1]},
        {"image_data": b64(image(5)), "image_id": ids[2], "metadata": {"k": "v"}},
    ]
    response = await client.post("/api/v1/index/batch?wait=true", json={"items": items})
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (2, 1)
    assert [r["status"] for r in body["results"]] == ["indexed", "rejected", "indexed"]
    assert body["results"][1]["error"]["code"] == "unsupported_format"
    assert (await client.get(f"/api/v1/images/{ids[2]}")).status_code == 200
    assert (await client.get(f"/api/v1/images/{ids[1]}")).status_code == 404


async def test_filters_text_and_more_like_this(client: httpx.AsyncClient) -> None:
    tag = uid("tag")
    ids = [uid("f") for _ in range(4)]
    metas: list[dict[str, object]] = [
        {"tags": [tag, "cat"], "year": 2019},
        {"tags": [tag, "dog"], "year": 2021},
        {"tags": [tag, "cat"], "year": 2023, "fresh": True},
        {"tags": ["other"], "year": 2023},
    ]
    for n, (image_id, meta) in enumerate(zip(ids, metas, strict=True)):
        await index(client, image_id, 10 + n, meta)

    async def found(path: str, body: dict[str, object]) -> list[str]:
        response = await client.post(path, json={"top_k": 100, **body})
        assert response.status_code == 200, response.text
        return [r["image_id"] for r in response.json()["results"]]

    query = {"image_data": b64(image(10))}
    assert set(await found("/api/v1/search", {**query, "filter": {"tags": tag}})) == set(ids[:3])
    cats = await found("/api/v1/search", {**query, "filter": {"tags": tag, "year": {"gte": 2020}}})
    assert set(cats) == {ids[1], ids[2]}
    either = await found("/api/v1/search", {**query, "filter": {"tags": ["dog", "other"]}})
    assert set(either) >= {ids[1], ids[3]}
    assert ids[0] not in either
    assert await found("/api/v1/search", {**query, "filter": {"fresh": True, "tags": tag}}) == [
        ids[2]
    ]

    text = await client.post(
        "/api/v1/search/text", json={"query": "a cat", "top_k": 5, "filter": {"tags": tag}}
    )
    assert text.status_code == 200, text.text
    assert set(r["image_id"] for r in text.json()["results"]) <= set(ids[:3])
    assert len(text.json()["results"]) == 3

    similar = await found("/api/v1/search/similar", {"image_id": ids[0], "filter": {"tags": tag}})
    assert ids[0] not in similar
    assert set(similar) == {ids[1], ids[2]}
    unknown = await client.post("/api/v1/search/similar", json={"image_id": uid("nope")})
    assert unknown.status_code == 404


async def test_result_cache_never_serves_a_stale_result(client: httpx.AsyncClient) -> None:
    tag = uid("cache")
    await index(client, uid("c"), 20, {"tags": tag})
    query = {"image_data": b64(image(20)), "top_k": 10, "filter": {"tags": tag}}
    first = (await client.post("/api/v1/search", json=query)).json()
    second = (await client.post("/api/v1/search", json=query)).json()
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["results"] == first["results"]
    await index(client, uid("c"), 21, {"tags": tag})  # a write bumps the generation
    third = (await client.post("/api/v1/search", json=query)).json()
    assert third["cached"] is False
    assert len(third["results"]) == 2
    stats = (await client.get("/api/v1/stats")).json()
    assert stats["cache"]["result"]["hits"] >= 1
    assert stats["cache"]["embedding"]["hits"] >= 1  # the third search reused the embedding


async def test_stats_report_the_pipeline(client: httpx.AsyncClient, stack: Stack) -> None:
    stats = (await client.get("/api/v1/stats")).json()
    assert stats["model_id"] == "ViT-B-32/random-seed0"
    assert stats["store"] == "qdrant-edge"
    assert set(stats["consumer_lag"]) == {f"{stack.prefix}images", f"{stack.prefix}vectors"}
    assert all(v["lag"] >= 0 for v in stats["consumer_lag"].values())
    assert stats["uptime_s"] > 0
    assert stats["images_in_per_s"] >= 0


async def _dead_letters(stack: Stack, count: int, timeout_s: float = 60) -> list[dict[str, object]]:
    consumer = AIOKafkaConsumer(
        f"{stack.prefix}deadletter", bootstrap_servers=stack.bootstrap,
        auto_offset_reset="earliest", group_id=None,
    )  # fmt: skip
    await consumer.start()
    letters: list[dict[str, object]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(letters) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    headers = {k: v.decode() for k, v in r.headers}
                    letters.append({"key": r.key, "value": r.value, **headers})
    finally:
        await consumer.stop()
    return letters


async def test_bad_upstream_events_go_to_dead_letters_and_the_rest_flows(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await producer.start()
    good = uid("after-bad")
    vector = np.ones(512, dtype=np.float32) / np.sqrt(512)

    def embedded(image_id: str, dim: int, model: str) -> bytes:
        event = ImageEmbedded(
            image_id=image_id, model_id=model, dim=dim, vector=pack_vector(vector[:dim]),
            embedded_at=datetime.now(UTC),
        )  # fmt: skip
        return event.model_dump_json().encode()

    try:
        images, vectors = f"{stack.prefix}images", f"{stack.prefix}vectors"
        await producer.send_and_wait(images, b"\x00garbage", key=b"bad-bytes")
        await producer.send_and_wait(
            images, image(30), key=b"bad-meta", headers=[("metadata", b"[not an object")]
        )
        # A compacted topic refuses a null key itself; an empty key gets through to us.
        await producer.send_and_wait(images, image(31), key=b"")
        await producer.send_and_wait(
            vectors, embedded("bad-dim", 7, "ViT-B-32/random-seed0"), key=b"bad-dim"
        )
        await producer.send_and_wait(
            vectors, embedded("bad-model", 512, "RN50/x"), key=b"bad-model"
        )
        await producer.send_and_wait(
            images, image(32), key=good.encode(), headers=[("metadata", b'{"ok": true}')]
        )
    finally:
        await producer.stop()

    letters = await _dead_letters(stack, 5)
    by_key = {letter["key"]: letter for letter in letters}
    assert str(by_key[b"bad-bytes"]["reason"]).startswith("unsupported_format")
    assert by_key[b"bad-bytes"]["value"] == b"\x00garbage"
    assert by_key[b"bad-bytes"]["source-topic"] == images
    assert "source-offset" in by_key[b"bad-bytes"]
    assert str(by_key[b"bad-meta"]["reason"]).startswith("bad_metadata")
    assert by_key[b"bad-meta"]["original-metadata"] == "[not an object"
    assert str(by_key[b""]["reason"]).startswith("empty_key")
    assert str(by_key[b"bad-dim"]["reason"]).startswith("wrong_dim")
    assert str(by_key[b"bad-model"]["reason"]).startswith("unknown_model")

    deadline = time.monotonic() + 60
    while (await client.get(f"/api/v1/images/{good}")).status_code != 200:
        assert time.monotonic() < deadline, "the consumer stopped after bad records"
        await asyncio.sleep(0.3)
    assert (await client.get("/api/v1/stats")).json()["dead_letters"] >= 5


async def test_wait_and_errors_on_a_path_the_pipeline_cannot_serve(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/api/v1/search", json={"image_data": b64(image(1)), "top_k": 101})
    assert response.status_code == 422
    assert (await client.get("/api/v1/images/" + uid("never"))).status_code == 404


async def test_a_query_image_the_gateway_passes_and_the_embedder_cannot_decode_is_a_422(
    client: httpx.AsyncClient,
) -> None:
    """The gateway checks a query image's header only; the pixels are the embedder's to
    decode, and a JPEG whose scan is cut short is refused there with the same answer."""
    whole = image(3)
    truncated = whole[: len(whole) // 2]
    response = await client.post("/api/v1/search", json={"image_data": b64(truncated)})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "corrupt_image"
    assert "cannot be decoded" in response.json()["error"]["message"]
    not_an_image = await client.post("/api/v1/search", json={"image_data": b64(b"%PDF-1.7")})
    assert (not_an_image.status_code, not_an_image.json()["error"]["code"]) == (
        422, "unsupported_format"
    )  # fmt: skip
    good = await client.post("/api/v1/search", json={"image_data": b64(whole)})
    assert good.status_code == 200, good.text


async def test_redis_down_degrades_to_no_cache_and_searches_still_work(stack: Stack) -> None:
    settings = GatewaySettings(
        kafka=KafkaSettings(bootstrap_servers=stack.bootstrap, topic_prefix=stack.prefix),
        redis=RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2),
        rate_limit="1000/second",
    )
    async with in_process_gateway(settings) as c:
        ready = await c.get("/api/v1/ready")
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"
        assert ready.json()["checks"]["redis"] == "down"
        for _ in range(2):
            response = await c.post("/api/v1/search", json={"image_data": b64(image(1))})
            assert response.status_code == 200, response.text
            assert response.json()["cached"] is False


class SeedClient:
    """A client written against the seed's README only: its requests, its fields."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30)

    def index(self, data: bytes, image_id: str, tags: list[str]) -> dict[str, object]:
        body = {
            "image_data": "data:image/png;base64," + base64.b64encode(data).decode(),
            "image_id": image_id,
            "metadata": {"tags": tags, "source": "user_upload"},
        }
        response = self.http.post("/api/v1/index", json=body)
        response.raise_for_status()
        reply: dict[str, object] = response.json()
        assert reply["success"] is True, reply
        assert isinstance(reply["message"], str)
        assert reply["message"]
        assert isinstance(reply["processing_time_ms"], float | int)
        return reply

    def search(self, data: bytes) -> dict[str, object]:
        body = {
            "image_data": "data:image/png;base64," + base64.b64encode(data).decode(),
            "top_k": 10,
            "threshold": 0.7,
            "include_metadata": True,
        }
        response = self.http.post("/api/v1/search", json=body)
        response.raise_for_status()
        reply: dict[str, object] = response.json()
        uuid.UUID(str(reply["query_id"]))
        assert isinstance(reply["search_time_ms"], float | int)
        results = reply["results"]
        assert isinstance(results, list)
        assert reply["total_found"] == len(results)
        return reply

    def healthy(self) -> bool:
        body = self.http.get("/api/v1/health").json()
        datetime.fromisoformat(body["timestamp"])
        return bool(body["status"] == "healthy" and body["version"] and body["services"])


def test_a_client_written_for_the_seed_works_unchanged(stack: Stack) -> None:
    seed = SeedClient(stack.url)
    assert seed.healthy()
    image_id = uid("seed-client.png")
    data = make_image(4242, fmt="PNG")
    seed.index(data, image_id, ["nature", "landscape"])
    deadline = time.monotonic() + 30
    while True:  # the seed indexed synchronously; here the image is searchable shortly after
        results = seed.search(data)["results"]
        assert isinstance(results, list)
        mine = [hit for hit in results if hit["image_id"] == image_id]
        if mine:
            break
        assert time.monotonic() < deadline, "the seed client never found its image"
        time.sleep(0.2)
    assert mine[0]["score"] >= 0.99
    assert all(hit["score"] >= 0.7 for hit in results)  # the seed's threshold
    assert mine[0]["metadata"] == {"tags": ["nature", "landscape"], "source": "user_upload"}
    stats = seed.http.get("/api/v1/stats")
    assert stats.status_code == 200
    seed.http.close()


async def test_content_and_thumbnails_come_back_from_the_images_topic(
    client: httpx.AsyncClient, stack: Stack, infra: Services
) -> None:
    image_id = uid("content/photo.jpg")
    original = make_image(41, size=600, fmt="JPEG")
    response = await client.post(
        "/api/v1/index?wait=true", json={"image_data": b64(original), "image_id": image_id}
    )
    assert response.status_code == 202, response.text

    got = await client.get(f"/api/v1/images/{image_id}/content")
    assert got.status_code == 200, got.text
    assert (got.content, got.headers["content-type"]) == (original, "image/jpeg")
    tag = got.headers["etag"]
    unchanged = await client.get(
        f"/api/v1/images/{image_id}/content", headers={"If-None-Match": tag}
    )
    assert (unchanged.status_code, unchanged.content) == (304, b"")

    webp = await client.get(
        f"/api/v1/images/{image_id}/content?size=64", headers={"Accept": "image/webp,*/*"}
    )
    assert webp.status_code == 200, webp.text
    assert webp.headers["content-type"] == "image/webp"
    with Image.open(io.BytesIO(webp.content)) as thumb:
        assert (thumb.format, max(thumb.size)) == ("WEBP", 64)
    jpeg = await client.get(f"/api/v1/images/{image_id}/content?size=100&format=jpeg")
    with Image.open(io.BytesIO(jpeg.content)) as thumb:
        assert (thumb.format, thumb.size) == ("JPEG", (100, 100))
    redis = Redis.from_url(infra.redis_url)
    try:
        cached = await redis.keys(f"{stack.prefix}thumb:*")
    finally:
        await redis.aclose()
    assert len(cached) >= 2  # both thumbnails are in Redis, keyed by the record's offset
    again = await client.get(f"/api/v1/images/{image_id}/content?size=64&format=webp")
    assert again.content == webp.content

    replaced = make_image(42, size=300, fmt="PNG")  # a new upload under the same id
    response = await client.post(
        "/api/v1/index?wait=true", json={"image_data": b64(replaced), "image_id": image_id}
    )
    assert response.status_code == 202, response.text
    now = await client.get(f"/api/v1/images/{image_id}/content")
    assert (now.content, now.headers["content-type"]) == (replaced, "image/png")
    assert now.headers["etag"] != tag
    small = await client.get(f"/api/v1/images/{image_id}/content?size=64&format=webp")
    with Image.open(io.BytesIO(small.content)) as thumb:
        assert thumb.size == (64, 64)  # the new image's thumbnail, not the cached old one
    assert small.content != webp.content

    too_big = await client.get(f"/api/v1/images/{image_id}/content?size=513")
    assert too_big.status_code == 422
    deleted = await client.delete(f"/api/v1/images/{image_id}?wait=true")
    assert deleted.status_code == 202
    gone = await client.get(f"/api/v1/images/{image_id}/content?size=64")
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "not_found")


async def test_content_of_an_image_an_upstream_producer_wrote(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    image_id = uid("upstream/raw.png")
    data = make_image(43, size=200)
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(f"{stack.prefix}images", data, key=image_id.encode())
    finally:
        await producer.stop()
    deadline = time.monotonic() + 60
    while (got := await client.get(f"/api/v1/images/{image_id}/content")).status_code == 404:
        assert time.monotonic() < deadline, "the upstream image was never indexed"
        await asyncio.sleep(0.2)
    assert got.status_code == 200, got.text
    assert (got.content, got.headers["content-type"]) == (data, "image/png")


async def test_the_page_is_served_with_its_assets(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/ui/app.js">' in page.text
    for asset, kind in (("/ui/app.js", "javascript"), ("/ui/style.css", "text/css")):
        response = await client.get(asset)
        assert response.status_code == 200
        assert kind in response.headers["content-type"]


async def _upload(
    client: httpx.AsyncClient, image_id: str, data: bytes, tag: str, check: bool = True
) -> dict[str, object]:
    response = await client.post(
        f"/api/v1/index?wait=true&check_duplicates={str(check).lower()}",
        json={"image_data": b64(data), "image_id": image_id, "metadata": {"tags": tag}},
    )
    assert response.status_code == 202, response.text
    body: dict[str, object] = response.json()
    return body


async def test_exact_duplicates_are_reported_at_upload_and_in_groups(
    client: httpx.AsyncClient,
) -> None:
    tag, first, copy, other = uid("dup"), uid("dup/a.png"), uid("dup/copy.png"), uid("dup/b.png")
    data = make_image(61, size=160)

    assert (await _upload(client, first, data, tag))["duplicate_of"] == []
    again = await _upload(client, copy, data, tag)  # the same bytes under a new id
    assert again["duplicate_of"] == [first]
    assert f"already present as {first!r}" in str(again["message"])
    assert (await _upload(client, first, data, tag))["duplicate_of"] == [copy]  # a re-upload
    assert (await _upload(client, other, make_image(62, size=160), tag, check=False))[
        "duplicate_of"
    ] is None

    response = await client.post("/api/v1/duplicates", json={"filter": {"tags": tag}})
    assert response.status_code == 200, response.text
    page = response.json()
    assert [{g["image_id"], *(m["image_id"] for m in g["members"])} for g in page["groups"]] == [
        {first, copy}
    ]
    assert page["groups"][0]["members"][0]["exact"] is True
    assert (page["next_cursor"], page["scanned"]) == (None, 3)
    near = await client.post(
        "/api/v1/duplicates", json={"filter": {"tags": tag}, "threshold": 0.999, "limit": 5}
    )
    assert near.status_code == 200, near.text
    assert {first, copy} in [
        {g["image_id"], *(m["image_id"] for m in g["members"])} for g in near.json()["groups"]
    ]
    batch = await client.post(
        "/api/v1/index/batch?check_duplicates=true",
        json={"items": [{"image_data": b64(data), "image_id": uid("dup/batch.png")}]},
    )
    assert batch.status_code == 202, batch.text
    assert sorted(batch.json()["results"][0]["duplicate_of"]) == sorted([first, copy])
    bad = await client.post("/api/v1/duplicates", json={"limit": 0})
    assert bad.status_code == 422


async def test_search_by_several_examples_and_by_a_crop(client: httpx.AsyncClient) -> None:
    tag = uid("multi")
    ids = [uid(f"multi/{i}.png") for i in range(4)]
    pictures = [make_image(70 + i, size=200) for i in range(4)]
    for image_id, data in zip(ids, pictures, strict=True):
        await _upload(client, image_id, data, tag, check=False)
    only_ours = {"filter": {"tags": tag}, "top_k": 4}

    by_id = await client.post(
        "/api/v1/search/multi",
        json={"positive": [{"image_id": ids[0], "weight": 0.01}, {"image_data": b64(pictures[1])}],
              **only_ours},
    )  # fmt: skip
    assert by_id.status_code == 200, by_id.text
    found = [r["image_id"] for r in by_id.json()["results"]]
    assert ids[0] not in found  # named by id: left out
    assert found[0] == ids[1]  # the image given as bytes is itself the closest

    mixed = await client.post(
        "/api/v1/search/multi",
        json={"positive": [{"text": "a colourful pattern"}, {"image_id": ids[2]}],
              "negative": [{"image_id": ids[3]}], **only_ours},
    )  # fmt: skip
    assert mixed.status_code == 200, mixed.text
    assert {r["image_id"] for r in mixed.json()["results"]} == {ids[0], ids[1]}

    missing = await client.post(
        "/api/v1/search/multi", json={"positive": [{"image_id": uid("never")}]}
    )
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    two_kinds = await client.post(
        "/api/v1/search/multi", json={"positive": [{"image_id": ids[0], "text": "x"}]}
    )
    assert two_kinds.status_code == 422

    whole = {"x": 0, "y": 0, "w": 200, "h": 200}
    cropped = await client.post(
        "/api/v1/search", json={"image_data": b64(pictures[2]), "crop": whole, **only_ours}
    )
    assert cropped.status_code == 200, cropped.text
    assert cropped.json()["results"][0]["image_id"] == ids[2]
    part = await client.post(
        "/api/v1/search",
        json={"image_data": b64(pictures[2]), "crop": {"x": 0, "y": 0, "w": 100, "h": 100},
              **only_ours},
    )  # fmt: skip
    assert part.status_code == 200, part.text
    assert part.json()["results"][0]["score"] < cropped.json()["results"][0]["score"]
    outside = await client.post(
        "/api/v1/search",
        json={"image_data": b64(pictures[2]), "crop": {"x": 150, "y": 0, "w": 100, "h": 10}},
    )
    assert (outside.status_code, outside.json()["error"]["code"]) == (422, "bad_crop")


async def test_vectors_on_request(client: httpx.AsyncClient) -> None:
    tag, image_id = uid("vec"), uid("vec/1.png")
    await _upload(client, image_id, make_image(80, size=120), tag, check=False)

    got = await client.get(f"/api/v1/images/{image_id}?include_vector=true")
    vector = np.asarray(got.json()["vector"])
    assert vector.shape == (512,)
    assert float(np.linalg.norm(vector)) == pytest.approx(1.0, abs=1e-4)
    assert len(got.json()["content_sha256"]) == 64
    assert (await client.get(f"/api/v1/images/{image_id}")).json()["vector"] is None

    found = await client.post(
        "/api/v1/search/text",
        json={"query": "anything", "filter": {"tags": tag}, "include_vectors": True},
    )
    assert found.status_code == 200, found.text
    assert np.allclose(found.json()["results"][0]["vector"], vector, atol=1e-6)


async def test_the_new_endpoints_are_documented_with_examples(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path in ("/api/v1/search/multi", "/api/v1/duplicates", "/api/v1/images/{image_id}/content"):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    assert schemas["MultiSearchRequest"]["properties"]["positive"]["examples"]
    assert schemas["DuplicatesRequest"]["properties"]["threshold"]["examples"] == [0.95]
    assert (
        "image/webp"
        in spec["paths"]["/api/v1/images/{image_id}/content"]["get"]["responses"]["200"]["content"]
    )
