"""Pipeline statistics read from Kafka itself: consumer lag, rates, dead letters.

Lag is what a consumer group has yet to process (end offset − committed offset, summed
over partitions). Rates come from the growth of the images and vectors topics' end
offsets between samples this gateway takes (over the last ~10–60 s).

Decisions:

- One read (:meth:`KafkaStats.read`) serves everything ``/stats`` shows: one ListOffsets
  request for the end offsets of the images, vectors and dead-letter topics together, one
  for the dead letters' beginnings, and one OffsetFetch per consumer group. Asked for each
  figure separately, a ``/stats`` had cost ~14 requests and 20–27 ms of CPU across the
  gateway and the broker (measured on the 2-core dev machine), so a page or a script
  polling it 10 times a second took a tenth of the machine.
- Callers that arrive while a read is in flight share it (its requests may have left
  just before they asked); a caller arriving after it ended starts another, so a script
  that writes a bad record and then asks, alone, sees its dead letter. A read that takes
  longer than ``send_timeout_s`` fails, and the next caller reads again.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from imgsim_core.settings import KafkaSettings


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    images: int
    vectors: int


@dataclass(frozen=True, slots=True)
class Figures:
    """What one read of Kafka tells ``/stats``."""

    lag: dict[str, tuple[str, int]]  # topic → (group, records behind)
    dead_letters: int  # records held in the dead-letter topic
    rates: tuple[float, float]  # (images produced per s, vectors produced per s)
    at: float  # time.monotonic() of the read


class KafkaStats:
    def __init__(self, settings: KafkaSettings, groups: dict[str, str]) -> None:
        """``groups`` maps a topic to the consumer group whose lag on it is reported."""
        self._settings = settings
        self._groups = groups
        self._admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers, group_id=None, enable_auto_commit=False
        )
        self._partitions: dict[str, list[TopicPartition]] = {}
        self._samples: deque[Sample] = deque(maxlen=64)
        self._reading: asyncio.Task[Figures] | None = None
        self.reads = 0  # reads that went to Kafka

    async def start(self) -> None:
        await self._admin.start()
        await self._consumer.start()

    async def stop(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        await self._consumer.stop()
        await self._admin.close()

    async def read(self) -> Figures:
        """The figures, from the read in flight or a new one; TimeoutError when Kafka does
        not answer within ``send_timeout_s``."""
        if self._reading is None:
            self._reading = asyncio.create_task(self._read_within(), name="imgsim-kafka-stats")
            self._reading.add_done_callback(self._read_done)
        # shield: a caller that gives up (its timeout) does not cancel the others' read
        return await asyncio.shield(self._reading)

    def _read_done(self, task: asyncio.Task[Figures]) -> None:
        self._reading = None
        if not task.cancelled():
            task.exception()  # retrieved: the callers got it, or none was left to

    async def _topic_partitions(self, topic: str) -> list[TopicPartition]:
        if topic not in self._partitions:
            described = await self._admin.describe_topics([topic])
            self._partitions[topic] = [
                TopicPartition(topic, p["partition"]) for p in described[0]["partitions"]
            ]
        return self._partitions[topic]

    async def _read_within(self) -> Figures:
        """A read that fails after ``send_timeout_s`` (a broker that does not answer): the
        next caller starts another, rather than wait on one stuck in aiokafka's retries."""
        async with asyncio.timeout(self._settings.send_timeout_s):
            return await self._read()

    async def _read(self) -> Figures:
        topics = self._settings.topics
        self.reads += 1
        by_topic = {
            t: await self._topic_partitions(t)
            for t in {*self._groups, topics.images, topics.vectors, topics.deadletter}
        }
        ends = await self._consumer.end_offsets([p for ps in by_topic.values() for p in ps])
        dead = by_topic[topics.deadletter]
        begins = await self._consumer.beginning_offsets(dead)
        lag = {}
        for topic, group in self._groups.items():
            committed = await self._admin.list_consumer_group_offsets(group)
            behind = sum(
                max(0, ends[tp] - (committed[tp].offset if tp in committed else 0))
                for tp in by_topic[topic]
            )
            lag[topic] = (group, behind)
        now = Sample(
            time.monotonic(),
            sum(ends[p] for p in by_topic[topics.images]),
            sum(ends[p] for p in by_topic[topics.vectors]),
        )
        return Figures(
            lag=lag,
            dead_letters=sum(ends[p] - begins[p] for p in dead),
            rates=self._rates(now),
            at=now.at,
        )

    def _rates(self, now: Sample) -> tuple[float, float]:
        while self._samples and now.at - self._samples[0].at > 60:
            self._samples.popleft()
        self._samples.append(now)
        base = self._samples[0]
        elapsed = now.at - base.at
        if elapsed < 1:
            return 0.0, 0.0
        return (now.images - base.images) / elapsed, (now.vectors - base.vectors) / elapsed
