"""What a batch of vectors-topic records does to the store: a pure function.

:class:`Planner` turns raw aiokafka records into upserts, deletes and dead letters,
without I/O, so every rule is unit-testable:

- key = image id (:func:`imgsim_core.kafka.decode_key`); a null value (tombstone) deletes;
- any other value must be :class:`~imgsim_core.contracts.ImageEmbedded` JSON whose
  ``image_id`` equals the key, whose ``model_id`` is the live collection's model or one
  of ``older_models`` (each collection holds one model's vectors: they never mix; one
  pass plans them all) and whose vector has the index's dimension, finite and
  non-zero (cosine needs a norm);
- a record that breaks a rule becomes a dead letter ``"<code>: <why>"`` (the codes are
  also in :attr:`BatchPlan.dead_letter_codes`, for metrics) and the rest of the batch
  goes on;
- an upsert keeps the event's ``source_partition``/``source_offset`` (the images-topic
  record it came from);
- a vector of a model in ``skip_models`` is skipped silently: during and after a model
  change the old and the new embedder both produce, and each collection keeps its own
  model's vectors (:mod:`imgsim_indexer.reindex`);
- the model is checked in :meth:`Planner.add` itself, before the vector's rules
  (:func:`_point`), so no exception steers between collections;
- within one batch the last operation per image id wins (Kafka keeps order per key, and
  records of different keys are independent, so deletes and upserts of one plan can be
  applied in any order).
"""

from __future__ import annotations

import math
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
from imgsim_indexer.payload import Point


@dataclass(slots=True)
class Writes:
    """What one collection gets of a batch."""

    upserts: list[Point] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class BatchPlan:
    """The store operations and dead letters of one batch."""

    upserts: list[Point] = field(default_factory=list)  # the live model's collection
    deletes: list[str] = field(default_factory=list)
    older: dict[str, Writes] = field(default_factory=dict)  # older model → its collection's
    dead_letters: list[OutRecord] = field(default_factory=list)
    dead_letter_codes: list[str] = field(default_factory=list)  # one per dead letter
    skipped: int = 0  # vectors of a model in skip_models


class Planner:
    """Upserts, deletes and dead letters for vectors-topic records (in offset order per
    partition), a slice at a time or all at once: :meth:`add` slices in order, then
    :meth:`plan` (``Planner(...).plan(records)`` for one batch in one step). The plan is
    the same either way; a caller may let other work run between two slices (a batch of
    1,024 takes ~15–20 ms to plan here).

    Vectors of ``model_id`` go to :attr:`BatchPlan.upserts`, those of an ``older_models``
    model to :attr:`BatchPlan.older` (the collections a model change keeps, see
    :mod:`imgsim_indexer.reindex`); a tombstone deletes from every one of them; the last
    operation per image id wins in each collection. ``dead_letters=False`` skips bad
    records without making dead letters: for a pass over records that the live consumer
    already judged (a reindex).
    """

    def __init__(
        self,
        *,
        dim: int,
        model_id: str,
        deadletter_topic: str,
        now: datetime,
        older_models: Collection[str] = (),
        skip_models: Collection[str] = (),
        dead_letters: bool = True,
        max_metadata_bytes: int = ImageLimits().max_metadata_bytes,
    ) -> None:
        self.model_id = model_id
        self._dim = dim
        self._deadletter_topic = deadletter_topic
        self._now = now
        self._skip_models = skip_models
        self._dead_letters = dead_letters
        self._max_metadata_bytes = max_metadata_bytes
        # model → image id → its last operation (None = delete)
        self._last: dict[str, dict[str, Point | None]] = {m: {} for m in (model_id, *older_models)}
        self._plan = BatchPlan()

    def add(self, records: Iterable[ConsumerRecord[Any, Any]]) -> None:
        last = self._last
        for record in records:
            try:
                image_id, event = _event(record)
                if event is None:
                    for ops in last.values():
                        ops[image_id] = None
                    continue
                if event.model_id not in last:
                    if event.model_id in self._skip_models:
                        self._plan.skipped += 1
                    else:
                        why = (f"the vector comes from model {event.model_id!r}, "
                               f"the index holds {self.model_id!r}")  # fmt: skip
                        self._reject(record, "unknown_model", why)
                    continue
                last[event.model_id][image_id] = _point(
                    event, dim=self._dim, now=self._now, max_metadata_bytes=self._max_metadata_bytes
                )
            except EventError as exc:
                self._reject(record, exc.code, exc.message)

    def plan(self, records: Iterable[ConsumerRecord[Any, Any]] = ()) -> BatchPlan:
        """The plan of every record added, ``records`` last."""
        self.add(records)
        plan = self._plan
        for model, ops in self._last.items():
            writes = Writes()
            for image_id, op in ops.items():
                if op is None:
                    writes.deletes.append(image_id)
                else:
                    writes.upserts.append(op)
            if model == self.model_id:
                plan.upserts, plan.deletes = writes.upserts, writes.deletes
            else:
                plan.older[model] = writes
        return plan

    def _reject(self, record: ConsumerRecord[Any, Any], code: str, message: str) -> None:
        plan = self._plan
        if not self._dead_letters:
            plan.skipped += 1
            return
        plan.dead_letters.append(
            dead_letter_record(self._deadletter_topic, record, f"{code}: {message}")
        )
        plan.dead_letter_codes.append(code)


def _event(record: ConsumerRecord[Any, Any]) -> tuple[str, ImageEmbedded | None]:
    """The image id and the event of a record (None: a tombstone)."""
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
    return image_id, event


def _point(event: ImageEmbedded, *, dim: int, now: datetime, max_metadata_bytes: int) -> Point:
    """The point of an event of a known model; raises EventError when it breaks a rule."""
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
    # In float64 the squared norm of float32s neither overflows nor underflows, so it is
    # positive and finite exactly when every value is finite and one is not zero (one
    # dot product: 1.5 µs against 2.5 for isfinite and any).
    wide = vector.astype(np.float64)
    if not 0.0 < float(wide @ wide) < math.inf:
        raise EventError("bad_vector", "the vector is zero or not finite")
    # An upstream producer's vectors skip the gateway's check; a point with more would
    # make every search that returns it too big to answer.
    size = len(encode_metadata(event.metadata)) if event.metadata else 2
    if size > max_metadata_bytes:
        raise EventError(
            "metadata_too_large",
            f"the metadata is {size} bytes of JSON; the limit is {max_metadata_bytes}",
        )
    return Point(
        image_id=event.image_id,
        vector=vector,
        model_id=event.model_id,
        metadata=event.metadata,
        indexed_at=now,
        source_partition=event.source_partition,
        source_offset=event.source_offset,
        content_sha256=event.content_sha256,
    )
