"""``imgsim deadletter list|show|replay``: read the dead-letter topic and send records back.

A dead letter keeps the rejected record's key and value, the reason, where it came from
(``source-topic``, ``source-partition``, ``source-offset``) and the record's own headers
prefixed with ``original-``. Replay produces the original record (key, value, headers
without the prefix) to its source topic, as an upstream producer would, after the cause
is fixed (a model that failed, a metadata limit raised, ...). Records are keyed by image
id and the topics are compacted, so replaying one twice is harmless.

Dead letters are addressed by their own position, ``PARTITION:OFFSET`` on the
dead-letter topic, as ``list`` prints it. Reading needs no consumer group: the topic is
read from its start to its current end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError

from imgsim_cli.errors import CliError, ConnectionFailed
from imgsim_core.kafka import OutRecord, make_producer, produce_all
from imgsim_core.settings import KafkaSettings
from imgsim_core.topics import Header

KAFKA_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: int  # on the dead-letter topic
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def image_id(self) -> str:
        return "" if self.key is None else self.key.decode("utf-8", "replace")

    def _text(self, name: str) -> str:
        return self.headers.get(name, b"").decode("utf-8", "replace")

    @property
    def reason(self) -> str:
        return self._text(Header.REASON)

    @property
    def code(self) -> str:
        """The reason's code: ``model_error`` of ``model_error: ...``."""
        return self.reason.split(":", 1)[0].strip()

    @property
    def source_topic(self) -> str:
        return self._text(Header.SOURCE_TOPIC)

    @property
    def source(self) -> str:
        partition, offset = self._text(Header.SOURCE_PARTITION), self._text(Header.SOURCE_OFFSET)
        return f"{self.source_topic} {partition}:{offset}"

    def original(self) -> OutRecord:
        """The rejected record as it was produced, addressed to its source topic."""
        if not self.source_topic:
            raise CliError(f"dead letter {self.position} has no {Header.SOURCE_TOPIC} header")
        headers = [
            (name.removeprefix(Header.ORIGINAL_PREFIX), value)
            for name, value in self.headers.items()
            if name.startswith(Header.ORIGINAL_PREFIX)
        ]
        return OutRecord(self.source_topic, self.key, self.value, headers)


def parse_position(text: str) -> tuple[int, int]:
    partition, sep, offset = text.partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise CliError(f"{text!r} is not a dead letter's PARTITION:OFFSET (see `deadletter list`)")
    return int(partition), int(offset)


def from_record(record: ConsumerRecord[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        record.partition, record.offset, record.key, record.value, dict(record.headers or ())
    )


async def _partitions(kafka: KafkaSettings, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] or not described["partitions"]:
        raise CliError(f"there is no topic {topic} (is the prefix right?)", "no_topic")
    return sorted(TopicPartition(topic, p["partition"]) for p in described["partitions"])


async def read_all(kafka: KafkaSettings) -> list[DeadLetter]:
    """Every dead letter the topic holds now, by partition and offset."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers, group_id=None, enable_auto_commit=False
    )
    letters: list[DeadLetter] = []
    try:
        async with asyncio.timeout(KAFKA_TIMEOUT_S):
            assigned = await _partitions(kafka, kafka.topics.deadletter)
            await consumer.start()
            consumer.assign(assigned)
            await consumer.seek_to_beginning(*assigned)
            ends = await consumer.end_offsets(assigned)
            remaining = {tp for tp in assigned if ends[tp] > await consumer.position(tp)}
            while remaining:
                batches = await consumer.getmany(*remaining, timeout_ms=1000)
                for tp, records in batches.items():
                    letters.extend(from_record(r) for r in records)
                    if records and records[-1].offset + 1 >= ends[tp]:
                        remaining.discard(tp)
    except KafkaConnectionError as exc:
        raise ConnectionFailed(f"cannot reach Kafka at {kafka.bootstrap_servers}: {exc}") from None
    except TimeoutError:
        raise ConnectionFailed(f"Kafka at {kafka.bootstrap_servers} did not answer") from None
    finally:
        await consumer.stop()
    return sorted(letters, key=lambda d: (d.partition, d.offset))


def select(
    letters: Iterable[DeadLetter], positions: Sequence[str] = (), code: str | None = None
) -> list[DeadLetter]:
    """The dead letters at ``positions`` (all when none are given) with reason ``code``."""
    chosen = list(letters)
    if positions:
        by_position = {(d.partition, d.offset): d for d in chosen}
        wanted = [parse_position(p) for p in positions]
        missing = [f"{p}:{o}" for p, o in wanted if (p, o) not in by_position]
        if missing:
            raise CliError(f"no dead letter at {', '.join(missing)}", "not_found")
        chosen = [by_position[w] for w in wanted]
    if code is not None:
        chosen = [d for d in chosen if d.code == code]
    return chosen


async def replay(kafka: KafkaSettings, letters: Sequence[DeadLetter]) -> None:
    """Produce each dead letter's original record to its source topic, acknowledged."""
    records = [d.original() for d in letters]
    producer = make_producer(kafka, linger_ms=5)
    try:
        async with asyncio.timeout(KAFKA_TIMEOUT_S):
            await producer.start()
            await produce_all(producer, records)
    except (KafkaError, TimeoutError) as exc:
        raise ConnectionFailed(f"Kafka at {kafka.bootstrap_servers} refused: {exc!r}") from None
    finally:
        await producer.stop()
