"""What one image costs in Kafka: bytes on the broker's disk per record on ``imgsim.images``
and ``imgsim.vectors``, written the way the gateway and the embedder write them.

Starts a single-node Kafka in a temp folder, creates the topics with the services' own
settings (``ensure_topics``), produces ``--vectors`` vector records (an ``ImageEmbedded``
JSON of a 512-d vector, a small metadata object, the headers the embedder sends) and
``--images`` 640×480 photo-like JPEGs with their metadata header, then reads the size of
each topic's partition logs. Also prints how far each value compresses with zstd, lz4
and gzip (a producer setting, ``compression.type``; imgsim sends uncompressed today).

    uv run python bench/record_sizes.py

The per-record figures are the input to ``docs/capacity.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaProducer

from imgsim_core.contracts import ImageEmbedded, pack_vector
from imgsim_core.kafka import encode_metadata, ensure_topics, produced_headers
from imgsim_core.settings import KafkaSettings
from imgsim_devstack.processes import KafkaBroker, free_port

sys.path.insert(0, str(Path(__file__).parent))
from photos import photo

METADATA = {"tags": ["shoe", "red"], "year": 2024, "sku": "sku-000000"}


def topic_bytes(logs: Path, topic: str) -> int:
    return sum(f.stat().st_size for d in logs.glob(f"{topic}-*") for f in d.glob("*.log"))


def vector_record(i: int, rng: np.random.Generator) -> tuple[bytes, bytes, list]:
    v = rng.normal(size=512).astype(np.float32)
    v /= np.linalg.norm(v)
    image_id = f"products/sku-{i:06d}.jpg"
    event = ImageEmbedded(
        image_id=image_id,
        model_id="ViT-B-32/laion2b_s34b_b79k",
        dim=512,
        vector=pack_vector(v),
        metadata={**METADATA, "sku": f"sku-{i:06d}"},
        source_partition=i % 6,
        source_offset=i,
        embedded_at=datetime.now(UTC),
        content_sha256=hashlib.sha256(image_id.encode()).hexdigest(),
    )
    headers = produced_headers(model_id=event.model_id)
    return image_id.encode(), event.model_dump_json().encode(), headers


def compressed(values: list[bytes]) -> dict[str, float]:
    """Mean compressed size of each value alone, by codec (those installed)."""
    codecs = {"gzip": lambda b: gzip.compress(b, 6)}
    try:
        import zstandard

        zstd = zstandard.ZstdCompressor(level=3)
        codecs["zstd"] = zstd.compress
    except ImportError:
        pass
    try:
        import lz4.frame

        codecs["lz4"] = lz4.frame.compress
    except ImportError:
        pass
    return {name: float(np.mean([len(f(v)) for v in values])) for name, f in codecs.items()}


async def produce(settings: KafkaSettings, records: list[tuple[str, bytes, bytes, list]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_request_size=settings.max_message_bytes,
    )
    await producer.start()
    try:
        sent = [await producer.send(t, v, key=k, headers=h) for t, k, v, h in records]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=20_000)
    parser.add_argument("--images", type=int, default=500)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imgsim-records-"))
    broker = KafkaBroker("kafka", work / "kafka.log", data_dir=work / "kafka", port=free_port())
    broker.start()
    try:
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap)
        await ensure_topics(settings)
        rng = np.random.default_rng(0)
        topics = settings.topics
        vectors = [vector_record(i, rng) for i in range(args.vectors)]
        await produce(settings, [(topics.vectors, k, v, h) for k, v, h in vectors])
        jpegs = [photo(i) for i in range(args.images)]
        images = [
            (
                topics.images,
                f"products/sku-{i:06d}.jpg".encode(),
                jpeg,
                produced_headers(
                    metadata=encode_metadata({**METADATA, "sku": f"sku-{i:06d}"}).decode()
                ),
            )
            for i, jpeg in enumerate(jpegs)
        ]
        await produce(settings, images)
        logs = broker.data_dir / "logs"
        vec_disk = topic_bytes(logs, topics.vectors) / args.vectors
        img_disk = topic_bytes(logs, topics.images) / args.images
        vec_value = float(np.mean([len(v) for _, v, _ in vectors]))
        img_value = float(np.mean([len(j) for j in jpegs]))
        vec_codecs = compressed([v for _, v, _ in vectors[:2000]])
        img_codecs = compressed(jpegs[:100])
    finally:
        broker.stop()
    print(
        f"Kafka {broker.bootstrap}, uncompressed producer, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(
        f"imgsim.vectors: {args.vectors:,} records, value {vec_value:,.0f} B "
        f"(ImageEmbedded JSON, metadata {len(json.dumps(METADATA))} B), "
        f"on disk {vec_disk:,.0f} B/record"
    )
    print(
        f"imgsim.images: {args.images:,} records, value {img_value / 1024:,.1f} KiB "
        f"(640×480 JPEG q90), on disk {img_disk / 1024:,.1f} KiB/record"
    )
    for name, values, codecs in (
        ("vector", vec_value, vec_codecs),
        ("image", img_value, img_codecs),
    ):
        shown = ", ".join(f"{c} {s / values:.0%}" for c, s in sorted(codecs.items()))
        print(f"{name} value compressed alone: {shown} of its size")


if __name__ == "__main__":
    asyncio.run(main())
