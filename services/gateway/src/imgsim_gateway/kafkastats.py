"""Pipeline statistics read from Kafka itself: consumer lag, rates, dead letters.

Lag is what a consumer group has yet to process (end offset − committed offset, summed
over partitions). Rates come from the growth of the images and vectors topics' end
offsets between samples this gateway takes when asked (over the last ~10–60 s).
"""

from __future__ import annotations

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

    async def start(self) -> None:
        await self._admin.start()
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()
        await self._admin.close()

    async def _topic_partitions(self, topic: str) -> list[TopicPartition]:
        if topic not in self._partitions:
            described = await self._admin.describe_topics([topic])
            self._partitions[topic] = [
                TopicPartition(topic, p["partition"]) for p in described[0]["partitions"]
            ]
        return self._partitions[topic]

    async def _span(self, topic: str) -> tuple[dict[TopicPartition, int], int]:
        """End offsets by partition, and the records currently held (end − beginning)."""
        partitions = await self._topic_partitions(topic)
        ends = await self._consumer.end_offsets(partitions)
        begins = await self._consumer.beginning_offsets(partitions)
        return ends, sum(ends[p] - begins[p] for p in partitions)

    async def lag(self) -> dict[str, tuple[str, int]]:
        """Topic → (group, records behind)."""
        out = {}
        for topic, group in self._groups.items():
            ends, _ = await self._span(topic)
            committed = await self._admin.list_consumer_group_offsets(group)
            behind = sum(
                max(0, end - (committed[tp].offset if tp in committed else 0))
                for tp, end in ends.items()
            )
            out[topic] = (group, behind)
        return out

    async def dead_letters(self) -> int:
        _, held = await self._span(self._settings.topics.deadletter)
        return held

    async def rates(self) -> tuple[float, float]:
        """(images produced per s, vectors produced per s) over the recent past."""
        topics = self._settings.topics
        image_ends, _ = await self._span(topics.images)
        vector_ends, _ = await self._span(topics.vectors)
        now = Sample(time.monotonic(), sum(image_ends.values()), sum(vector_ends.values()))
        while self._samples and now.at - self._samples[0].at > 60:
            self._samples.popleft()
        self._samples.append(now)
        base = self._samples[0]
        elapsed = now.at - base.at
        if elapsed < 1:
            return 0.0, 0.0
        return (now.images - base.images) / elapsed, (now.vectors - base.vectors) / elapsed
