"""Zero-downtime reindex: build a new collection from the compacted vectors topic, then
switch the alias to it.

How it works:

1. ``start`` opens a new real collection ``<collection>_v<N+1>`` beside the current one
   and snapshots the vectors topic's end offsets (the ``total`` to replay).
2. A replay consumer in its own consumer group (``<group>-reindex-<target>``) reads the
   vectors topic from the earliest offset and applies every record to the new
   collection with the same pure planning as live indexing (:func:`plan_batch`; records
   that break the contract are skipped here — the live consumer already dead-lettered
   them). It does not stop at the snapshot: it keeps following the topic, so live writes
   reach the new collection too, **in log order**. (Writing live batches to both
   collections from the live consumer instead could apply an image's older update after
   its newer one, since the two consumers run at different offsets.)
3. Searches keep being served from the current collection throughout.
   With a model change (``model_id``), the new collection takes only the new model's
   vectors, which an embedder running that model produces from the images topic; the
   live collection skips them. After the switch the old model's collection stays open
   and keeps taking the old model's vectors, so queries still embedded by the old model
   get right answers until the queries move to the new model and it is dropped.
4. Once the replay has passed the snapshot, it takes the live consumer's write lock and
   checks that it has read at least as far as the live consumer has written on every
   partition; then it moves the alias (Edge: the CURRENT pointer; server: one atomic
   alias operation) and hands the new collection to the live handlers. The live consumer
   may then re-apply a few records the replay already applied — in the same order, so
   the result is the same.
5. The old collection is kept until ``drop_old`` (``imgsim reindex --drop-old``) or
   until ``INDEXER_REINDEX_RETENTION_S`` has passed after the switch.

Scope: one indexer instance runs the whole reindex, and step 4 compares the replay with
*its* live consumer. So the instance must consume every partition of the vectors topic:
with the embedded store there is exactly one instance; with a Qdrant server and several
indexers in the group, ``start`` refuses (:class:`ReindexRefusedError`, the reply says
why) and so does the switch if the group grew meanwhile (the reindex fails, the live
collection stays). A cluster runs it once, as ``infra/k8s/qdrant-server-scaled``'s
reindex Job does: hold the indexers at one replica, reindex, release them. (Coordinating
the switch across several live consumers, for example with a barrier record in every
partition, is possible but not built: a reindex is rare and one replica keeps up with the
live writes of most deployments while it runs.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from imgsim_core.contracts import ReindexStatus
from imgsim_indexer.errors import ReindexRefusedError, StoreError
from imgsim_indexer.operations import plan_batch
from imgsim_indexer.settings import IndexerSettings
from imgsim_indexer.store import VectorStore, collection_version, open_store

log = logging.getLogger(__name__)


class LiveIndex(Protocol):
    """What the live vectors handler shares with a reindex."""

    store: VectorStore  # the collection searches and live writes go to
    lock: asyncio.Lock  # held by the live handler while it applies a batch
    positions: dict[TopicPartition, int]  # next offset after what it applied, per partition
    model_id: str  # the model of the live collection
    skip_models: set[str]  # vectors of these models are skipped by the live consumer
    previous: dict[str, VectorStore]  # collections of earlier models, still searchable

    def held(self) -> tuple[set[int], set[int] | None]:
        """Partitions of the vectors topic the live consumer holds, and all of them
        (None while it has no metadata yet)."""
        ...


class Reindexer:
    def __init__(self, settings: IndexerSettings, live: LiveIndex) -> None:
        self.settings = settings
        self.live = live
        self._task: asyncio.Task[None] | None = None
        self._dropper: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._status = ReindexStatus(state="idle", collection="")
        self._started = 0.0
        self._model = ""

    @property
    def _changes_model(self) -> bool:
        return self._model != self.live.model_id

    # -- commands -------------------------------------------------------------------------

    async def status(self) -> ReindexStatus:
        store = self.live.store
        current = await store.aliased() or store.collection
        old = [c for c in await store.collections() if c not in {current, self._status.target}]
        processed, total = self._status.processed, self._status.total
        elapsed = time.monotonic() - self._started if self._started else 0.0
        rate = processed / elapsed if elapsed > 0 else 0.0
        remaining = max(0, total - processed)
        eta = remaining / rate if rate > 0 and self._status.state == "running" else None
        return self._status.model_copy(
            update={
                "collection": current,
                "old_collections": old,
                "rate_per_s": round(rate, 1),
                "eta_s": round(eta, 1) if eta is not None else None,
                "dropped": [],
            }
        )

    async def start(self, model_id: str | None = None) -> ReindexStatus:
        if self._task is not None and not self._task.done():
            return await self.status()
        self._check_sole_consumer()
        self._model = model_id or self.live.model_id
        store = self.live.store
        existing = await store.collections()
        current = await store.aliased() or store.collection
        version = max([collection_version(c) for c in [*existing, current]] + [0]) + 1
        target_name = f"{self.settings.qdrant.collection}_v{version}"
        target = open_store(
            self.settings.qdrant,
            self.settings.dim,
            self.settings.payload_indexes,
            physical=target_name,
        )
        await target.open()
        self._started = time.monotonic()
        self._status = ReindexStatus(
            state="running",
            collection=current,
            target=target_name,
            source_topic=self.settings.kafka.topics.vectors,
            model_id=self._model,
            started_at=datetime.now(UTC),
        )
        if self._changes_model:
            # The new model's vectors go to the new collection only; the live one keeps
            # its model and skips them instead of dead-lettering them.
            self.live.skip_models.add(self._model)
        self._task = asyncio.create_task(self._run(target), name=f"reindex-{target_name}")
        log.info("reindex started: %s → %s", current, target_name)
        return await self.status()

    async def drop_old(self) -> ReindexStatus:
        store = self.live.store
        current = await store.aliased() or store.collection
        keep = {current, store.current, self._status.target if self._running else None}
        for model_id, previous in list(self.live.previous.items()):
            del self.live.previous[model_id]
            await previous.close()
        dropped = []
        for name in await store.collections():
            if name not in keep:
                await store.drop_collection(name)
                dropped.append(name)
                log.info("dropped old collection %s", name)
        return (await self.status()).model_copy(update={"dropped": dropped})

    async def stop(self) -> None:
        for task in (self._task, self._dropper, self._closer):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    @property
    def _running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- the replay -----------------------------------------------------------------------

    async def _run(self, target: VectorStore) -> None:
        switched = False
        try:
            switched = await self._replay(target)
        except asyncio.CancelledError:
            self._fail("cancelled")
            raise
        except Exception as exc:  # a failed reindex must leave the live index untouched
            log.exception("reindex into %s failed", target.current)
            self._fail(str(exc))
        finally:
            if not switched:
                await target.close()

    def _fail(self, error: str) -> None:
        if self._changes_model:
            self.live.skip_models.discard(self._model)
        self._status = self._status.model_copy(
            update={"state": "failed", "error": error, "finished_at": datetime.now(UTC)}
        )

    async def _replay(self, target: VectorStore) -> bool:
        settings = self.settings
        topic = settings.kafka.topics.vectors
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            group_id=f"{settings.group_id}-reindex-{target.current}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            partitions = await _partitions(consumer, topic)
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            begins = await consumer.beginning_offsets(partitions)
            ends = await consumer.end_offsets(partitions)
            self._set(total=sum(ends[p] - begins[p] for p in partitions))
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=500)
                for records in batches.values():
                    plan = plan_batch(
                        records,
                        dim=settings.dim,
                        model_id=self._model,
                        deadletter_topic=settings.kafka.topics.deadletter,
                        now=datetime.now(UTC),
                        dead_letters=False,  # the live consumer letters bad records
                        max_metadata_bytes=settings.limits.max_metadata_bytes,
                    )
                    await target.delete(plan.deletes)
                    await target.upsert(plan.upserts)
                    self._set(processed=self._status.processed + len(records))
                if batches:
                    await consumer.commit()
                positions = {p: await consumer.position(p) for p in partitions}
                if all(positions[p] >= ends[p] for p in partitions) and await self._switch(
                    target, positions
                ):
                    return True
        finally:
            await consumer.stop()

    async def _switch(self, target: VectorStore, positions: dict[TopicPartition, int]) -> bool:
        """Move the alias if the replay is as far as the live writes; else keep replaying."""
        if self._changes_model and await target.count() < await self.live.store.count():
            return False  # the new model's embedder has not re-embedded every image yet
        async with self.live.lock:
            self._check_sole_consumer()  # the group may have grown since the start
            behind = [p for p, live in self.live.positions.items() if positions.get(p, 0) < live]
            if behind:
                return False
            assert target.current is not None
            self._set(state="switching")
            await target.switch_alias(target.current)
            old, self.live.store = self.live.store, target
            if self._changes_model:
                old_model, self.live.model_id = self.live.model_id, self._model
                self.live.previous[old_model] = old  # searchable by old-model queries
                self.live.skip_models.discard(self._model)
                self.live.skip_models.add(old_model)
        if old not in self.live.previous.values():
            # Searches that picked up the old store just before the switch may still use it.
            self._closer = asyncio.create_task(_close_later(old, 5.0))
        self._set(state="done", finished_at=datetime.now(UTC))
        log.info("reindex done: alias %s → %s", target.collection, target.current)
        retention = self.settings.reindex_retention_s
        if retention is not None:
            self._dropper = asyncio.create_task(self._drop_later(retention))
        return True

    async def _drop_later(self, after_s: float) -> None:
        await asyncio.sleep(after_s)
        try:
            await self.drop_old()
        except StoreError:
            log.exception("dropping old collections after retention failed")

    def _check_sole_consumer(self) -> None:
        held, every = self.live.held()
        topic = self.settings.kafka.topics.vectors
        if every is None:
            raise ReindexRefusedError(
                f"the live consumer has no partitions of {topic} yet; retry in a few seconds"
            )
        if held != every:
            raise ReindexRefusedError(
                f"this indexer consumes {len(held)} of the {len(every)} partitions of {topic}: "
                f"other indexers in group {self.settings.group_id} consume the rest, and a "
                "reindex follows the live writes of one. Scale the indexer to one replica "
                "(infra/k8s/qdrant-server-scaled: the reindex Job does), then start it again"
            )

    def _set(self, **changes: object) -> None:
        self._status = self._status.model_copy(update=changes)


async def _close_later(store: VectorStore, after_s: float) -> None:
    try:
        await asyncio.sleep(after_s)
    finally:
        await store.close()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The topic's partitions; refreshes the consumer's metadata when it has none yet
    (``consumer.topics()`` fetches metadata but does not store it)."""
    if not consumer.partitions_for_topic(topic):
        await consumer._client.force_metadata_update()  # aiokafka has no public call for it
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
