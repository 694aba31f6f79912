"""The requesting side of Kafka request/reply.

FastStream 0.7's ``KafkaBroker.request()`` does not work against a real broker, so the
asking side is built here on aiokafka. Each process that asks owns one reply topic
(``<prefix>replies.<instance id>``) that it alone reads, without a consumer group, from
its end. A request carries ``correlation_id``, ``reply_to`` and ``deadline`` headers;
responders are plain FastStream handlers that return a value, which FastStream publishes
to ``reply_to`` with the same ``correlation_id``. Replies nobody waits for any more
(timed out, or for another process) are dropped.

A process deletes its reply topic when it stops. One that is killed cannot, so each
requester also writes a heartbeat record to its own topic every ``heartbeat_s``, and a
requester given ``orphans_of`` (the gateway) deletes the reply topics under that prefix
whose newest record is older than ``orphan_after_s`` on two sweeps in a row: the topics
of processes that died without stopping. Two sweeps, so that a topic created a moment
before its first heartbeat is never taken for an orphan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from imgsim_core.kafka import header, now_ms, produced_headers, send_acked, until_served
from imgsim_core.tasks import cancel_and_wait
from imgsim_core.topics import Header

log = logging.getLogger(__name__)
_TRACER = trace.get_tracer(__name__)


class RequestTimeoutError(TimeoutError):
    """No reply came before the deadline."""


class Requester:
    """Sends requests and awaits their replies on this process's own reply topic."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        bootstrap_servers: str,
        reply_topic: str,
        *,
        fetch_max_wait_ms: int = 500,
        reply_retention_ms: int = 60_000,
        replication_factor: int = 1,
        send_timeout_s: float = 2.0,
        max_message_bytes: int = 16 * 1024 * 1024,
        heartbeat_s: float = 30.0,
        orphans_of: str | None = None,
        orphan_after_s: float = 300.0,
    ) -> None:
        # orphan_after_s > heartbeat_s: KafkaSettings refuses anything else at start.
        self._producer = producer
        self._bootstrap = bootstrap_servers
        self.reply_topic = reply_topic
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._retention_ms = reply_retention_ms
        self._replication = replication_factor
        self._send_timeout_s = send_timeout_s
        self._max_message_bytes = max_message_bytes
        self._heartbeat_s = heartbeat_s
        self._orphans_of = orphans_of
        self._orphan_after_s = orphan_after_s
        self._suspects: set[str] = set()  # quiet on the last sweep
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        await self._create_reply_topic()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=self._fetch_max_wait_ms,
            auto_offset_reset="latest",
        )
        await consumer.start()
        partition = TopicPartition(self.reply_topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_end(partition)
        await consumer.position(partition)  # resolve the offset before the first request
        self._consumer = consumer
        await self._heartbeat()
        self._tasks = [
            asyncio.create_task(self._read_replies(), name="imgsim-replies"),
            asyncio.create_task(self._keep_alive(), name="imgsim-reply-heartbeat"),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        if self._consumer is not None:
            await self._consumer.stop()
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        await self._delete_reply_topic()

    async def request(
        self,
        topic: str,
        value: bytes,
        *,
        timeout_s: float,
        key: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        """Produce ``value`` to ``topic`` and return the reply's value, or raise on timeout."""
        correlation_id = uuid.uuid4().hex
        deadline = now_ms() + int(timeout_s * 1000)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        try:
            with _TRACER.start_as_current_span(
                f"{topic} request",
                kind=SpanKind.CLIENT,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.destination.name": topic,
                    "messaging.message.conversation_id": correlation_id,
                },
            ):
                # The request carries this span's context; the reply ends the span.
                record_headers = produced_headers()
                record_headers += [
                    (Header.CORRELATION_ID, correlation_id.encode()),
                    (Header.REPLY_TO, self.reply_topic.encode()),
                    (Header.DEADLINE, str(deadline).encode()),
                ]
                record_headers += [(k, v.encode()) for k, v in (headers or {}).items()]
                # Kafka unreachable: KafkaTimeoutError soon, not a reply timeout later
                # (unless the request's own deadline is the shorter bound).
                try:
                    await send_acked(
                        self._producer, topic, value, key=key, headers=record_headers,
                        timeout_s=min(self._send_timeout_s, timeout_s),
                    )  # fmt: skip
                except KafkaTimeoutError as exc:
                    if timeout_s < self._send_timeout_s:
                        raise TimeoutError from exc
                    raise
                async with asyncio.timeout(max(0.0, deadline - now_ms()) / 1000):
                    return await future
        except TimeoutError as exc:
            raise RequestTimeoutError(f"no reply from {topic} within {timeout_s:.1f} s") from exc
        finally:
            self._pending.pop(correlation_id, None)

    async def _read_replies(self) -> None:
        assert self._consumer is not None
        while True:  # heartbeats carry no correlation id and are dropped below
            try:
                batches = await self._consumer.getmany(timeout_ms=1000)
            except KafkaError:
                log.exception("reading replies failed; retrying")
                await asyncio.sleep(0.5)
                continue
            for records in batches.values():
                for record in records:
                    self._resolve(record)

    async def _heartbeat(self) -> None:
        """A record on this process's reply topic: the topic is in use."""
        try:
            await send_acked(
                self._producer, self.reply_topic, b"", key=None,
                headers=[(Header.HEARTBEAT, b"1")], timeout_s=self._send_timeout_s,
            )  # fmt: skip
        except KafkaError:
            log.warning("could not write the heartbeat of reply topic %s", self.reply_topic)

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            await self._heartbeat()
            if self._orphans_of is not None:
                try:
                    await self.sweep_orphans()
                except (KafkaError, TimeoutError):
                    log.warning("could not sweep orphaned reply topics; trying again later")

    async def sweep_orphans(self) -> list[str]:
        """Delete the reply topics under ``orphans_of`` that were quiet on two sweeps.

        Returns the topics deleted. Quiet: no record newer than ``orphan_after_s``; a live
        requester writes one every ``heartbeat_s``.
        """
        if self._orphans_of is None:
            return []
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap)
        await admin.start()
        try:
            names = [
                t
                for t in await admin.list_topics()
                if t.startswith(self._orphans_of) and t != self.reply_topic
            ]
            quiet = await self._quiet(names)
            doomed = sorted(quiet & self._suspects)
            self._suspects = quiet - set(doomed)
            if doomed:
                await admin.delete_topics(doomed, timeout_ms=5000)
                log.info("deleted %d orphaned reply topics: %s", len(doomed), ", ".join(doomed))
            return doomed
        finally:
            await admin.close()

    async def _quiet(self, topics: list[str]) -> set[str]:
        """Those of ``topics`` (one partition each) with no record since the cut-off."""
        if not topics:
            return set()
        cutoff = now_ms() - int(self._orphan_after_s * 1000)
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, group_id=None)
        await consumer.start()
        try:
            async with asyncio.timeout(10):  # aiokafka waits forever on a vanished topic
                found = await consumer.offsets_for_times(
                    {TopicPartition(t, 0): cutoff for t in topics}
                )
        finally:
            await consumer.stop()
        return {tp.topic for tp, newer in found.items() if newer is None}

    def _resolve(self, record: Any) -> None:
        cid = header(record.headers, Header.CORRELATION_ID)
        future = self._pending.get(cid.decode("utf-8", "replace")) if cid else None
        if future is None or future.done():
            log.debug("dropping a reply nobody waits for (correlation id %r)", cid)
            return
        future.set_result(record.value or b"")

    async def _create_reply_topic(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap)
        await admin.start()
        try:
            topic = NewTopic(
                self.reply_topic,
                1,
                self._replication,
                topic_configs={
                    "retention.ms": str(self._retention_ms),
                    "max.message.bytes": str(self._max_message_bytes),  # replies of 100 hits
                },
            )
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([topic])
            await until_served(admin, [self.reply_topic])  # before the first heartbeat
        finally:
            await admin.close()

    async def _delete_reply_topic(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap)
        try:
            await admin.start()
            await admin.delete_topics([self.reply_topic], timeout_ms=5000)
        except KafkaError:
            log.warning("could not delete reply topic %s", self.reply_topic)
        finally:
            await admin.close()
