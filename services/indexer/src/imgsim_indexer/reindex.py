"""Zero-downtime reindex: build a new collection from the compacted vectors topic, then
switch the alias to it.

How it works:

1. ``start`` opens a new real collection ``<collection>_v<N+1>`` beside the current one
   and snapshots the vectors topic's end offsets (the ``total`` to replay).
2. A replay consumer in its own consumer group (``<group>-reindex-<target>``) reads the
   vectors topic from the earliest offset and applies every record to the new
   collection with the same planning as live indexing
   (:func:`~imgsim_indexer.serving.plan_in_slices`; records that break the contract are
   skipped here — the live consumer already dead-lettered them). It does not stop at the
   snapshot: it keeps following the topic, so live writes reach the new collection too,
   **in log order**. (Writing live batches to both
   collections from the live consumer instead could apply an image's older update after
   its newer one, since the two consumers run at different offsets.)
3. Searches keep being served from the current collection throughout.
   With a model change (``model_id``), the new collection takes only the new model's
   vectors, which an embedder running that model produces from the images topic; the
   live collection skips them. After the switch the old model's collection stays open
   and keeps taking the old model's vectors, so queries still embedded by the old model
   get right answers until the queries move to the new model and it is dropped.
4. Once the replay has passed the snapshot, :meth:`Collections.switch
   <imgsim_indexer.serving.Collections.switch>` checks, between two live batches, that
   it has read at least as far as the live consumer has written on every partition;
   then it moves the alias (Edge: the CURRENT pointer; server: one atomic alias
   operation) and makes the new collection the live one. The live consumer
   may then re-apply a few records the replay already applied — in the same order, so
   the result is the same.
5. The old collection is kept until ``drop_old`` (``imgsim reindex --drop-old``) or
   until ``INDEXER_REINDEX_RETENTION_S`` has passed after the switch.

The reindex reads and changes the live side only through
:class:`~imgsim_indexer.serving.Collections`, and opens its new collection with the
``open_collection`` the app gives it, so it knows neither handler nor store class; it
uses only aiokafka's public API (the topic's partitions come from the live consumer's
metadata).

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
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from imgsim_core.contracts import ReindexStatus
from imgsim_core.tasks import cancel_and_wait
from imgsim_indexer.errors import ReindexRefusedError, StoreError
from imgsim_indexer.operations import Planner
from imgsim_indexer.serving import Collections, plan_in_slices
from imgsim_indexer.settings import IndexerSettings
from imgsim_indexer.store import VectorStore, collection_version

log = logging.getLogger(__name__)


StoreOpener = Callable[[str], VectorStore]  # a real collection's name → its store, not open


class Reindexer:
    """Runs one reindex at a time into a collection that ``open_collection`` makes."""

    def __init__(
        self, settings: IndexerSettings, collections: Collections, open_collection: StoreOpener
    ) -> None:
        self.settings = settings
        self.collections = collections
        self._open_collection = open_collection
        self._task: asyncio.Task[None] | None = None
        self._dropper: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._status = ReindexStatus(state="idle", collection="")
        self._started = 0.0
        self._model = ""

    @property
    def _changes_model(self) -> bool:
        return self._model != self.collections.model_id

    # -- commands -------------------------------------------------------------------------

    async def status(self) -> ReindexStatus:
        store = self.collections.live
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
        self._model = model_id or self.collections.model_id
        store = self.collections.live
        existing = await store.collections()
        current = await store.aliased() or store.collection
        version = max([collection_version(c) for c in [*existing, current]] + [0]) + 1
        target_name = f"{self.settings.qdrant.collection}_v{version}"
        target = self._open_collection(target_name)
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
        # The new model's vectors go to the new collection only; the live one keeps its
        # model and skips them instead of dead-lettering them.
        self.collections.expect(self._model)
        self._task = asyncio.create_task(self._run(target), name=f"reindex-{target_name}")
        log.info("reindex started: %s → %s", current, target_name)
        return await self.status()

    async def drop_old(self) -> ReindexStatus:
        store = self.collections.live
        current = await store.aliased() or store.collection
        keep = {current, store.current, self._status.target if self._running else None}
        await self.collections.close_older()
        dropped = []
        for name in await store.collections():
            if name not in keep:
                await store.drop_collection(name)
                dropped.append(name)
                log.info("dropped old collection %s", name)
        return (await self.status()).model_copy(update={"dropped": dropped})

    async def stop(self) -> None:
        await cancel_and_wait(self._task, self._dropper, self._closer)

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
            self.collections.forget(self._model)
        self._status = self._status.model_copy(
            update={"state": "failed", "error": error, "finished_at": datetime.now(UTC)}
        )

    async def _replay(self, target: VectorStore) -> bool:
        settings = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            group_id=f"{settings.group_id}-reindex-{target.current}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            partitions = self._partitions()
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            begins = await consumer.beginning_offsets(partitions)
            ends = await consumer.end_offsets(partitions)
            self._set(total=sum(ends[p] - begins[p] for p in partitions))
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=500)
                for records in batches.values():
                    planner = Planner(
                        dim=settings.dim,
                        model_id=self._model,
                        deadletter_topic=settings.kafka.topics.deadletter,
                        now=datetime.now(UTC),
                        dead_letters=False,  # the live consumer letters bad records
                        max_metadata_bytes=settings.limits.max_metadata_bytes,
                    )
                    plan = await plan_in_slices(planner, records)
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
        if self._changes_model and await target.count() < await self.collections.live.count():
            return False  # the new model's embedder has not re-embedded every image yet
        self._check_sole_consumer()  # the group may have grown since the start
        old = await self.collections.switch(target, self._model, positions)
        if old is None:
            return False  # the live writes are ahead: keep replaying
        if old not in self.collections.older.values():
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
        held, every = self.collections.held()
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

    def _partitions(self) -> list[TopicPartition]:
        """Every partition of the vectors topic, as the live consumer's metadata knows
        them (``start`` checked that it has them)."""
        _, every = self.collections.held()
        topic = self.settings.kafka.topics.vectors
        return [TopicPartition(topic, p) for p in sorted(every or ())]

    def _set(self, **changes: object) -> None:
        self._status = self._status.model_copy(update=changes)


async def _close_later(store: VectorStore, after_s: float) -> None:
    try:
        await asyncio.sleep(after_s)
    finally:
        await store.close()
