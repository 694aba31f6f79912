"""What a batch of image records and a search query turn into: pure of Kafka.

- :func:`embed_records`: a batch of images-topic records → the records to produce
  (vectors, passed-through tombstones, dead letters) in input order, so per-key order
  holds, with one ``embed_images`` call for the whole batch. A bad record is
  dead-lettered alone and never fails the batch. A model failure is retried
  ``model_retries`` times with exponential backoff; if it persists, the images are
  tried one by one and those that still fail are dead-lettered as ``model_error: …``.
- :func:`embed_query`: a :class:`SearchRequested` → the :class:`VectorSearchRequested`
  the indexer answers (images and texts embedded as urgent work; ids pass through).

Images are decoded and preprocessed in the preprocessing pool
(:class:`~imgsim_embedder.preprocessing.PreprocessPool`), never on the event loop or the
inference thread, a query's on threads of its own and ahead of bulk images; a batch of
records goes to the model in batches of the batcher's size, each as soon as its images
are prepared, so the model runs while the pool prepares the next.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias

import torch
from aiokafka import ConsumerRecord
from prometheus_client import Counter

from imgsim_core.contracts import (
    Crop,
    Example,
    ImageEmbedded,
    Metadata,
    SearchParams,
    SearchRequested,
    Vector,
    VectorSearchRequested,
    decode_base64,
    pack_vector,
)
from imgsim_core.errors import ErrorCode
from imgsim_core.images import Box, ImageError
from imgsim_core.kafka import (
    EventError,
    OutRecord,
    dead_letter_record,
    decode_key,
    decode_metadata,
    header,
    produced_headers,
)
from imgsim_core.settings import ImageLimits
from imgsim_core.tasks import cancel_and_wait
from imgsim_core.topics import Header, Topics
from imgsim_core.tracing import batch_step
from imgsim_embedder.batcher import MicroBatcher
from imgsim_embedder.errors import InferenceError
from imgsim_embedder.model import ImageEncoder
from imgsim_embedder.preprocessing import PreprocessPool

log = logging.getLogger(__name__)

RECORDS = Counter("imgsim_embedder_records", "Image records handled.", ["outcome"])
IMAGES = Counter("imgsim_embedder_images", "Images embedded into vectors.")
DEADLETTERS = Counter(
    "imgsim_embedder_deadletters", "Image records sent to the dead-letter topic.", ["reason"]
)

Record: TypeAlias = "ConsumerRecord[Any, Any]"


@dataclass(frozen=True, slots=True)
class _Valid:
    index: int
    image_id: str
    metadata: Metadata
    future: asyncio.Future[torch.Tensor]


async def embed_records(
    records: Sequence[Record],
    *,
    encoder: ImageEncoder,
    batcher: MicroBatcher,
    pool: PreprocessPool,
    topics: Topics,
    limits: ImageLimits,
    model_retries: int = 3,
    retry_backoff_s: float = 0.1,
) -> list[OutRecord]:
    """The records to produce for a batch of image records: exactly one per record, in
    input order (a vector, a tombstone or a dead letter).

    Raises only when the batch must be redelivered (the batcher is stopping, cancelled).
    """
    out: list[OutRecord | None] = [None] * len(records)

    def dead_letter(i: int, code: str, message: str) -> None:
        out[i] = dead_letter_record(topics.deadletter, records[i], f"{code}: {message}")
        DEADLETTERS.labels(code).inc()
        RECORDS.labels("dead_letter").inc()

    valid: list[_Valid] = []
    for i, record in enumerate(records):
        try:
            image_id = decode_key(record.key)
            if record.value is None:
                tombstone = produced_headers(source=record)
                out[i] = OutRecord(topics.vectors, record.key, None, tombstone)
                RECORDS.labels("tombstone").inc()
                continue
            metadata = decode_metadata(
                header(record.headers, Header.METADATA), limits.max_metadata_bytes
            )
        except EventError as exc:
            dead_letter(i, exc.code, exc.message)
            continue
        future = pool.bulk(encoder, record.value, limits)
        valid.append(_Valid(i, image_id, metadata, future))

    # The model gets the images a batch at a time, each as soon as its own images are
    # prepared: it runs the first while the pool prepares the rest.
    embedded: list[_Valid] = []
    passes: list[asyncio.Task[list[Vector | InferenceError]]] = []
    try:
        for first in range(0, len(valid), batcher.max_batch):
            tensors: list[torch.Tensor] = []
            for item in valid[first : first + batcher.max_batch]:
                try:
                    tensors.append(await item.future)
                    embedded.append(item)
                except ImageError as exc:
                    dead_letter(item.index, exc.code, exc.message)
                except Exception as exc:  # a decoder bug on odd bytes: this image's alone
                    offset = records[item.index].offset
                    log.exception("preprocessing record at offset %d failed", offset)
                    dead_letter(item.index, "preprocess_error", f"{type(exc).__name__}: {exc}")
            if tensors:
                passes.append(asyncio.create_task(
                    _embed_bulk(batcher, tensors, model_retries, retry_backoff_s)
                ))  # fmt: skip
        results = [result for task in passes for result in await task]
    finally:
        await cancel_and_wait(*passes)  # those left when one failed (the batcher stopping)
    now = datetime.now(UTC)
    for item, result in zip(embedded, results, strict=True):
        if isinstance(result, InferenceError):
            dead_letter(item.index, "model_error", str(result))
            continue
        record = records[item.index]
        event = ImageEmbedded(
            image_id=item.image_id,
            model_id=encoder.model_id,
            dim=encoder.dim,
            vector=pack_vector(result),
            metadata=item.metadata,
            source_partition=record.partition,
            source_offset=record.offset,
            embedded_at=now,
            content_sha256=hashlib.sha256(record.value or b"").hexdigest(),
        )
        # Each vector carries its own image's trace (the record's span in this batch).
        model_headers = produced_headers(model_id=encoder.model_id, source=record)
        out[item.index] = OutRecord(
            topics.vectors, record.key, event.model_dump_json().encode(), model_headers
        )
        IMAGES.inc()
        RECORDS.labels("vector").inc()
    done = [r for r in out if r is not None]
    assert len(done) == len(records), "every record has exactly one output"
    return done


async def _embed_bulk(
    batcher: MicroBatcher, tensors: list[torch.Tensor], retries: int, backoff_s: float
) -> list[Vector | InferenceError]:
    """Each tensor's vector, or the model's error on it after bounded retries.

    The whole batch is tried ``1 + retries`` times with exponential backoff; if the model
    still fails, every image is tried once alone, so one image that breaks the model
    cannot take the others down with it.
    """
    for attempt in range(retries + 1):
        try:
            return list(await batcher.embed_images(tensors, urgent=False))
        except InferenceError as exc:
            if attempt == retries:
                log.error(
                    "the model failed on a batch of %d images %d times (%s); trying them one "
                    "by one, dead-lettering those that fail",
                    len(tensors),
                    attempt + 1,
                    exc,
                )
                if len(tensors) == 1:
                    return [exc]
                break
            delay = backoff_s * 2**attempt
            log.warning(
                "the model failed on a batch of %d images (attempt %d of %d), retrying in "
                "%.2f s: %s",
                len(tensors),
                attempt + 1,
                retries + 1,
                delay,
                exc,
            )
            await asyncio.sleep(delay)
    results: list[Vector | InferenceError] = []
    for tensor in tensors:
        try:
            results.append((await batcher.embed_images([tensor], urgent=False))[0])
        except InferenceError as exc:
            results.append(exc)
    return results


def _box(crop: Crop | None) -> Box | None:
    return None if crop is None else crop.box()


def _image_bytes(image: str) -> bytes:
    try:
        return decode_base64(image)
    except ValueError as exc:  # binascii.Error is one
        raise ImageError(ErrorCode.BAD_BASE64, "the image is not valid base64") from exc


async def _embed_examples(
    examples: Sequence[Example],
    *,
    encoder: ImageEncoder,
    batcher: MicroBatcher,
    pool: PreprocessPool,
    limits: ImageLimits,
) -> list[Example]:
    """The examples with each image and text replaced by its vector (ids pass through):
    the texts in one batch, the images in another."""
    texts = [e.text for e in examples if e.text is not None]
    images = [(_image_bytes(e.image), _box(e.crop)) for e in examples if e.image is not None]
    tensors = list(
        await asyncio.gather(*(pool.query_image(encoder, d, limits, c) for d, c in images))
    )
    text_vectors: Iterator[Vector] = iter(await batcher.embed_text(texts) if texts else [])
    image_vectors: Iterator[Vector] = iter(
        await batcher.embed_images(tensors, urgent=True) if tensors else []
    )
    out = []
    for example in examples:
        if example.text is None and example.image is None:
            out.append(example)
            continue
        vector = next(text_vectors) if example.text is not None else next(image_vectors)
        out.append(Example(vector=pack_vector(vector), weight=example.weight))
    return out


async def embed_query(
    query: SearchRequested,
    *,
    encoder: ImageEncoder,
    batcher: MicroBatcher,
    pool: PreprocessPool,
    limits: ImageLimits,
) -> VectorSearchRequested:
    """The query's vector search; raises ImageError (with a code) on bad input. Bulk
    images wait to be decoded while it runs (:meth:`PreprocessPool.query`)."""
    with pool.query():
        return await _embed_query(query, encoder=encoder, batcher=batcher, pool=pool, limits=limits)


async def _embed_query(
    query: SearchRequested,
    *,
    encoder: ImageEncoder,
    batcher: MicroBatcher,
    pool: PreprocessPool,
    limits: ImageLimits,
) -> VectorSearchRequested:
    params = query.model_dump(include=set(SearchParams.model_fields))
    if query.positive or query.negative:
        if query.image is not None or query.text is not None or not query.positive:
            raise ImageError(
                ErrorCode.BAD_REQUEST, "a search by examples needs positive examples only"
            )
        positive = await _embed_examples(
            query.positive, encoder=encoder, batcher=batcher, pool=pool, limits=limits
        )
        negative = await _embed_examples(
            query.negative, encoder=encoder, batcher=batcher, pool=pool, limits=limits
        )
        return VectorSearchRequested(
            **params, positive=positive, negative=negative, model_id=encoder.model_id,
            deadline_ms=query.deadline_ms,
        )  # fmt: skip
    if (query.image is None) == (query.text is None):
        raise ImageError(ErrorCode.BAD_REQUEST, "a search needs exactly one of image or text")
    if query.crop is not None and query.image is None:
        raise ImageError(ErrorCode.BAD_REQUEST, "a crop goes with an image query only")
    if query.text is not None:
        vectors = await batcher.embed_text([query.text])
    else:
        data = _image_bytes(query.image or "")
        with batch_step("preprocess image"):
            tensor = await pool.query_image(encoder, data, limits, _box(query.crop))
        vectors = await batcher.embed_images([tensor], urgent=True)
    return VectorSearchRequested(
        **params,
        vector=pack_vector(vectors[0]),
        model_id=encoder.model_id,
        deadline_ms=query.deadline_ms,
    )
