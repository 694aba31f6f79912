"""Which collection serves which model, and which one is live: one object owns it.

:class:`Collections` is what the live handlers and a reindex share, and the only place
that changes it:

- ``live`` is the collection searches and live writes go to, of model ``model_id``;
  ``older`` holds the collections of models a reindex switched away from (kept, and kept
  current, until ``drop_old``), so a query vector of such a model still searches its own
  vector space.
- :meth:`apply` plans a batch of vectors-topic records once for every collection
  (:class:`~imgsim_indexer.operations.Planner`, a slice of ``SLICE_POINTS`` records
  between two turns of the event loop) and writes it, under the lock, so a
  :meth:`switch` falls between two batches, never inside one; the plan is made under the
  lock too, so a batch is never planned for one model and written to another's
  collection.
- :meth:`switch` hands the live role to a reindex's new collection once the replay has
  read as far as the live consumer has written on every partition (the positions
  :meth:`apply` records), and moves the alias in the same step.
- :meth:`expect` / :meth:`forget` name the models whose vectors are skipped silently
  instead of dead-lettered: the new model while its collection is being built.
- :meth:`held` reads the live consumer's partitions through aiokafka's public API; the
  router registers the consumer with :meth:`watch`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from aiokafka import ConsumerRecord, TopicPartition
from faststream.kafka.subscriber.usecase import BatchSubscriber

from imgsim_core.tasks import in_slices
from imgsim_core.tracing import batch_step
from imgsim_indexer.operations import BatchPlan, Planner
from imgsim_indexer.settings import IndexerSettings
from imgsim_indexer.store import SLICE_POINTS, VectorStore


class Collections:
    def __init__(self, live: VectorStore, settings: IndexerSettings) -> None:
        self.live = live
        self.model_id = settings.model.model_id
        self.older: dict[str, VectorStore] = {}  # model → its collection, still searchable
        self._settings = settings
        self._skip: set[str] = set()
        self._lock = asyncio.Lock()  # one batch or one switch at a time
        self._positions: dict[TopicPartition, int] = {}  # next offset after the applied
        self._consumer: BatchSubscriber | None = None

    def for_model(self, model_id: str | None) -> VectorStore | None:
        """The collection of ``model_id``'s vectors (None: the live one); None if none."""
        if model_id is None or model_id == self.model_id:
            return self.live
        return self.older.get(model_id)

    # -- live writes ---------------------------------------------------------------------

    async def apply(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> BatchPlan:
        """Plan and write one batch to every collection; durable when it returns. The
        caller produces the plan's dead letters."""
        settings = self._settings
        async with self._lock:
            planner = Planner(
                dim=settings.dim,
                model_id=self.model_id,
                older_models=list(self.older),
                deadletter_topic=settings.kafka.topics.deadletter,
                now=datetime.now(UTC),
                skip_models=self._skip,
                max_metadata_bytes=settings.limits.max_metadata_bytes,
            )
            plan = await plan_in_slices(planner, records)
            with batch_step("store write", upserts=len(plan.upserts)):
                await self.live.delete(plan.deletes)
                await self.live.upsert(plan.upserts)
                for model, writes in plan.older.items():
                    await self.older[model].delete(writes.deletes)
                    await self.older[model].upsert(writes.upserts)
            for record in records:
                tp = TopicPartition(record.topic, record.partition)
                self._positions[tp] = max(self._positions.get(tp, 0), record.offset + 1)
        return plan

    # -- what a reindex changes ------------------------------------------------------------

    def expect(self, model_id: str) -> None:
        """Skip ``model_id``'s vectors silently (its collection is being built)."""
        if model_id != self.model_id:
            self._skip.add(model_id)

    def forget(self, model_id: str) -> None:
        self._skip.discard(model_id)

    async def switch(
        self, target: VectorStore, model_id: str, replayed: dict[TopicPartition, int]
    ) -> VectorStore | None:
        """Make ``target`` (of ``model_id``) live and point the alias at it, if
        ``replayed`` is at or past every position the live writes reached; returns the
        collection that was live (None: the replay is behind, nothing changed)."""
        assert target.current is not None
        async with self._lock:
            if any(replayed.get(tp, 0) < live for tp, live in self._positions.items()):
                return None
            await target.switch_alias(target.current)
            old, self.live = self.live, target
            if model_id != self.model_id:
                old_model, self.model_id = self.model_id, model_id
                self.older[old_model] = old  # searchable by old-model queries
                self._skip.discard(model_id)
        return old

    async def close_older(self) -> None:
        """Close the older models' collections (``drop_old``: their queries are gone);
        their vectors are skipped from then on."""
        while self.older:
            model_id, store = self.older.popitem()
            self._skip.add(model_id)
            await store.close()

    # -- the live consumer -----------------------------------------------------------------

    def watch(self, consumer: BatchSubscriber) -> None:
        self._consumer = consumer

    def held(self) -> tuple[set[int], set[int] | None]:
        """Partitions of the vectors topic the live consumer holds, and all of them (None
        while it has no metadata yet)."""
        consumer = None if self._consumer is None else self._consumer.consumer
        if consumer is None or not consumer.subscription():
            return set(), None
        (topic,) = consumer.subscription()
        held = {tp.partition for tp in consumer.assignment() if tp.topic == topic}
        return held, consumer.partitions_for_topic(topic)


async def plan_in_slices(
    planner: Planner, records: Sequence[ConsumerRecord[bytes, bytes]]
) -> BatchPlan:
    """``planner``'s plan of ``records``, ``SLICE_POINTS`` of them between two turns of
    the event loop (a batch of 1,024 in one step held every search for ~15–20 ms)."""
    async for part in in_slices(records, SLICE_POINTS):
        planner.add(part)
    return planner.plan()
