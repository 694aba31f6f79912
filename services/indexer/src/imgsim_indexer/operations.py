"""What a batch of vectors-topic records does to the store: a pure function.

:func:`plan_batch` turns raw aiokafka records into upserts, deletes and dead letters,
without I/O, so every rule is unit-testable:

- key = image id (:func:`imgsim_core.kafka.decode_key`); a null value (tombstone) deletes;
- any other value must be :class:`~imgsim_core.contracts.ImageEmbedded` JSON whose
  ``image_id`` equals the key, whose ``model_id`` is the collection's one model (vectors
  of different models never mix) and whose vector has the index's dimension, finite and
  non-zero (cosine needs a norm);
- a record that breaks a rule becomes a dead letter ``"<code>: <why>"`` (the codes are
  also in :attr:`BatchPlan.dead_letter_codes`, for metrics) and the rest of the batch
  goes on;
- an upsert keeps the event's ``source_partition``/``source_offset`` (the images-topic
  record it came from);
- a vector of a model in ``skip_models`` is skipped silently: during and after a model
  change the old and the new embedder both produce, and each collection keeps its own
  model's vectors (:mod:`imgsim_indexer.reindex`);
- within one batch the last operation per image id wins (Kafka keeps order per key, and
  records of different keys are independent, so deletes and upserts of one plan can be
  applied in any order).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from aiokafka import ConsumerRecord
from pydantic import ValidationError

from imgsim_core.contracts import ImageEmbedded
from imgsim_core.kafka import (
    EventError,
    OutRecord,
    dead_letter_record,
    decode_key,
    encode_metadata,
)
from imgsim_core.settings import ImageLimits
from imgsim_indexer.store import Point


@dataclass(slots=True)
class BatchPlan:
    """The store operations and dead letters of one batch."""

    upserts: list[Point] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    dead_letters: list[OutRecord] = field(default_factory=list)
    dead_letter_codes: list[str] = field(default_factory=list)  # one per dead letter
    skipped: int = 0  # vectors of a model in skip_models


class _OtherModelError(EventError):
    def __init__(self, model_id: str, expected: str) -> None:
        super().__init__(
            "unknown_model",
            f"the vector comes from model {model_id!r}, the index holds {expected!r}",
        )
        self.model_id = model_id


def plan_batch(
    records: Iterable[ConsumerRecord[Any, Any]],
    *,
    dim: int,
    model_id: str,
    deadletter_topic: str,
    now: datetime,
    skip_models: Collection[str] = (),
    dead_letters: bool = True,
    max_metadata_bytes: int = ImageLimits().max_metadata_bytes,
) -> BatchPlan:
    """Upserts, deletes and dead letters for ``records`` (in offset order per partition).

    ``dead_letters=False`` skips bad records without making dead letters: for a second
    pass over records that the live pass already judged (a reindex, an older model).
    """
    last: dict[str, Point | None] = {}  # image id → its last operation (None = delete)
    plan = BatchPlan()
    for record in records:
        try:
            image_id, point = _operation(
                record, dim=dim, model_id=model_id, now=now, max_metadata_bytes=max_metadata_bytes
            )
        except _OtherModelError as exc:
            if exc.model_id in skip_models or not dead_letters:
                plan.skipped += 1
                continue
            plan.dead_letters.append(
                dead_letter_record(deadletter_topic, record, f"{exc.code}: {exc.message}")
            )
            plan.dead_letter_codes.append(exc.code)
            continue
        except EventError as exc:
            if not dead_letters:
                plan.skipped += 1
                continue
            plan.dead_letters.append(
                dead_letter_record(deadletter_topic, record, f"{exc.code}: {exc.message}")
            )
            plan.dead_letter_codes.append(exc.code)
            continue
        last[image_id] = point
    for image_id, op in last.items():
        if op is None:
            plan.deletes.append(image_id)
        else:
            plan.upserts.append(op)
    return plan


def _operation(
    record: ConsumerRecord[Any, Any],
    *,
    dim: int,
    model_id: str,
    now: datetime,
    max_metadata_bytes: int,
) -> tuple[str, Point | None]:
    image_id = decode_key(record.key)
    if record.value is None:
        return image_id, None
    try:
        event = ImageEmbedded.model_validate_json(record.value)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise EventError("bad_json", "the value is not JSON") from exc
        raise EventError("bad_event", f"the value is not an ImageEmbedded event: {exc}") from exc
    if event.image_id != image_id:
        raise EventError(
            "key_mismatch", f"key {image_id!r} differs from the event's {event.image_id!r}"
        )
    if event.model_id != model_id:
        raise _OtherModelError(event.model_id, model_id)
    if event.dim != dim:
        raise EventError("wrong_dim", f"the vector has dim {event.dim}, the index expects {dim}")
    try:
        vector = event.array()
    except ValueError as exc:  # not base64, or not whole float32s
        raise EventError("bad_vector", "the vector is not base64 of packed float32") from exc
    if vector.shape != (dim,):
        raise EventError(
            "bad_vector", f"the vector holds {vector.size} floats, its event says dim {dim}"
        )
    if not np.all(np.isfinite(vector)) or not np.any(vector):
        raise EventError("bad_vector", "the vector is zero or not finite")
    # An upstream producer's vectors skip the gateway's check; a point with more would
    # make every search that returns it too big to answer.
    size = len(encode_metadata(event.metadata))
    if size > max_metadata_bytes:
        raise EventError(
            "metadata_too_large",
            f"the metadata is {size} bytes of JSON; the limit is {max_metadata_bytes}",
        )
    return image_id, Point(
        image_id=image_id,
        vector=vector,
        model_id=event.model_id,
        metadata=event.metadata,
        indexed_at=now,
        source_partition=event.source_partition,
        source_offset=event.source_offset,
        content_sha256=event.content_sha256,
    )
