"""Consumer lag of a FastStream worker, as a Prometheus gauge per group, topic and partition.

Every ``every_s`` seconds :class:`ConsumerLag` walks the broker's subscribers and, for each
partition assigned to their aiokafka consumers, sets the gauge to the partition's high
watermark (from the consumer's last fetch, no request) minus the group's committed
offset (one request to the group coordinator; the fetch position when nothing is
committed yet). Partitions no longer assigned drop out of the gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from prometheus_client import Gauge

from imgsim_core.tasks import cancel_and_wait, pause

log = logging.getLogger(__name__)

CONSUMER_LAG = Gauge(
    "imgsim_kafka_consumer_lag",
    "Records in the partition after the group's committed offset.",
    ["group", "topic", "partition"],
)
REQUEST_TIMEOUT_S = 5.0


def _consumers(broker: Any) -> Iterable[tuple[str, AIOKafkaConsumer]]:
    for subscriber in broker.subscribers:
        group = getattr(subscriber, "group_id", None)
        if not group:
            continue
        consumers = getattr(subscriber, "consumer_subgroup", None) or [
            getattr(subscriber, "consumer", None)
        ]
        for consumer in consumers:
            if isinstance(consumer, AIOKafkaConsumer):
                yield group, consumer


class ConsumerLag:
    """Samples the lag of a FastStream broker's subscribers in the background."""

    def __init__(self, broker: Any, every_s: float = 10.0) -> None:
        self.broker = broker
        self.every_s = every_s
        self._task: asyncio.Task[None] | None = None
        self._labels: set[tuple[str, str, str]] = set()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="imgsim-consumer-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def sample(self) -> dict[tuple[str, str, str], int]:
        """Update the gauge now; returns the lag by (group, topic, partition)."""
        lags: dict[tuple[str, str, str], int] = {}
        for group, consumer in _consumers(self.broker):
            for tp in consumer.assignment():
                high = consumer.highwater(tp)
                if high is None:  # nothing fetched yet
                    continue
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    done = await consumer.committed(tp)
                    if done is None:
                        done = await consumer.position(tp)
                lags[(group, tp.topic, str(tp.partition))] = max(0, high - done)
        for labels in self._labels - lags.keys():
            with contextlib.suppress(KeyError):
                CONSUMER_LAG.remove(*labels)
        for labels, lag in lags.items():
            CONSUMER_LAG.labels(*labels).set(lag)
        self._labels = set(lags)
        return lags

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except (KafkaError, TimeoutError, RuntimeError) as exc:
                log.debug("sampling consumer lag failed: %s", exc)
            await pause(self.every_s)
