"""Kafka helpers shared by the services: topic setup, header decoding, dead letters.

The services consume the images and vectors topics as raw records (tombstones have a
null value, upstream producers may send any headers), so this module also supplies a
FastStream batch parser that never fails on odd header bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaTimeoutError, TopicAlreadyExistsError
from aiokafka.structs import RecordMetadata
from faststream.kafka.message import KafkaMessage
from faststream.message import StreamMessage
from pydantic import TypeAdapter, ValidationError

from imgsim_core.contracts import FiniteMetadata, Metadata
from imgsim_core.ids import ImageIdError, check_image_id
from imgsim_core.settings import KafkaSettings
from imgsim_core.topics import CONTRACT_VERSION, Header
from imgsim_core.tracing import source_context, trace_headers

log = logging.getLogger(__name__)
_METADATA: TypeAdapter[Metadata] = TypeAdapter(FiniteMetadata)
RawHeaders = Sequence[tuple[str, bytes]]


class EventError(ValueError):
    """A record that breaks the contract; ``code`` names the reason for the dead letter."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def header(headers: RawHeaders, name: str) -> bytes | None:
    """The last value of a header, as bytes."""
    found = None
    for key, value in headers:
        if key == name:
            found = value
    return found


def decode_key(key: bytes | None) -> str:
    """A record key as an image id: UTF-8 and :func:`imgsim_core.ids.check_image_id`."""
    if not key:
        raise EventError("empty_key", "the record has no key (the image id)")
    try:
        image_id = key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError("bad_key", "the key is not UTF-8") from exc
    try:
        return check_image_id(image_id)
    except ImageIdError as exc:
        raise EventError("bad_key", f"the key breaks the image-id rule: {exc}") from exc


def decode_metadata(raw: bytes | None, max_bytes: int) -> Metadata:
    """The ``metadata`` header: a JSON object, at most ``max_bytes``."""
    if raw is None or raw == b"":
        return {}
    if len(raw) > max_bytes:
        raise EventError("metadata_too_large", f"metadata is over {max_bytes} bytes")
    try:
        return _METADATA.validate_json(raw)
    except ValidationError as exc:
        raise EventError(
            "bad_metadata", "the metadata header is not a JSON object of finite numbers"
        ) from exc


def encode_metadata(metadata: Metadata) -> bytes:
    return json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def produced_headers(
    *, source: ConsumerRecord[Any, Any] | None = None, **values: str
) -> list[tuple[str, bytes]]:
    """Headers of a record that imgsim produces: the contract version and trace context.

    The trace context is the current one, or, for a record made from the consumed record
    ``source``, that record's (its span inside a traced batch).
    """
    out = [(Header.CONTRACT, CONTRACT_VERSION.encode())]
    out.extend((name.replace("_", "-"), value.encode()) for name, value in values.items())
    out.extend(trace_headers(None if source is None else source_context(source)))
    return out


def dead_letter_headers(record: ConsumerRecord[Any, Any], reason: str) -> dict[str, str]:
    """Why and where from: the reason, the source topic/partition/offset, the original headers."""
    headers = {
        Header.REASON: reason,
        Header.SOURCE_TOPIC: record.topic,
        Header.SOURCE_PARTITION: str(record.partition),
        Header.SOURCE_OFFSET: str(record.offset),
        Header.CONTRACT: CONTRACT_VERSION,
    }
    for key, value in record.headers or ():
        headers[f"{Header.ORIGINAL_PREFIX}{key}"] = value.decode("utf-8", "replace")
    return headers


def dead_letter_record(topic: str, record: ConsumerRecord[Any, Any], reason: str) -> OutRecord:
    """The dead letter of a rejected record: its original key and value, and why."""
    log.warning(
        "dead letter: %s (topic=%s partition=%d offset=%d)",
        reason,
        record.topic,
        record.partition,
        record.offset,
    )
    headers = [(k, v.encode()) for k, v in dead_letter_headers(record, reason).items()]
    headers.extend(trace_headers(source_context(record)))
    return OutRecord(topic, record.key, record.value, headers)


@dataclass(frozen=True, slots=True)
class OutRecord:
    """A record to produce; ``value=None`` is a tombstone."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def max_request_size(settings: KafkaSettings) -> int:
    """Every producer's request limit: a record of ``max_message_bytes`` and its headers.

    aiokafka's default (1 MB) is below a search reply of 100 results with 16 KiB of
    metadata each; every topic the services create allows ``max_message_bytes``.
    """
    return settings.max_message_bytes + 64 * 1024


def make_producer(
    settings: KafkaSettings, *, linger_ms: int, batch_bytes: int = 16 * 1024
) -> AIOKafkaProducer:
    """An idempotent producer that waits for all in-sync replicas (durable output);
    ``batch_bytes`` per partition batch (aiokafka's default: one record or a few)."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        max_batch_size=batch_bytes,
        max_request_size=max_request_size(settings),
    )


class Outage:
    """Says once that a dependency is failing, and when it works again (with the count)."""

    def __init__(self, what: str, logger: logging.Logger = log) -> None:
        self.what = what
        self._log = logger
        self._since: float | None = None
        self._failures = 0

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> None:
        self._failures += 1
        if self._since is None:
            self._since = time.monotonic()
            self._log.error("%s is failing: %s (said once until it works again)", self.what, exc)

    def ok(self) -> None:
        if self._since is not None:
            self._log.warning(
                "%s works again after %.1f s and %d failed calls",
                self.what, time.monotonic() - self._since, self._failures,
            )  # fmt: skip
            self._since, self._failures = None, 0


async def send_acked(
    producer: AIOKafkaProducer,
    topic: str,
    value: bytes | None,
    *,
    key: bytes | None,
    headers: list[tuple[str, bytes]],
    timeout_s: float,
) -> RecordMetadata:
    """Produce one record and return once the broker has acknowledged it (durable).

    :class:`KafkaTimeoutError` (a :class:`KafkaError`) after ``timeout_s``: while the
    broker is unreachable aiokafka would keep retrying for ``request_timeout_ms`` (40 s).
    The record may still be delivered later, in order with what follows it; every
    write is keyed by its image id, so a client's retry after the error is safe.
    """
    try:
        async with asyncio.timeout(timeout_s):
            return await producer.send_and_wait(topic, value, key=key, headers=headers)
    except TimeoutError as exc:
        raise KafkaTimeoutError(f"no acknowledgement from Kafka within {timeout_s:.1f} s") from exc


async def produce_all(producer: AIOKafkaProducer, records: Sequence[OutRecord]) -> None:
    """Produce every record and return once the broker has acknowledged all of them."""
    futures = [await producer.send(r.topic, r.value, key=r.key, headers=r.headers) for r in records]
    if futures:
        await asyncio.gather(*futures)


def _sanitized(record: ConsumerRecord[Any, Any]) -> ConsumerRecord[Any, Any]:
    headers = record.headers or ()
    clean = tuple((k, v.decode("utf-8", "replace").encode()) for k, v in headers)
    return record if clean == tuple(headers) else dataclasses.replace(record, headers=clean)


async def safe_batch_parser(
    records: tuple[ConsumerRecord[Any, Any], ...],
    original: Callable[[tuple[ConsumerRecord[Any, Any], ...]], Awaitable[KafkaMessage]],
) -> KafkaMessage:
    """FastStream batch parser that never fails on header bytes that are not UTF-8.

    Handlers read the records (:func:`records_of`: a tombstone keeps its null value)
    rather than the decoded body.
    """
    return await original(tuple(_sanitized(r) for r in records))


def records_of(message: StreamMessage[Any]) -> tuple[ConsumerRecord[Any, Any], ...]:
    """The aiokafka records a batch subscriber's message carries, as they are."""
    raw = message.raw_message
    return raw if isinstance(raw, tuple) else (raw,)


async def batch_records(message: StreamMessage[Any]) -> tuple[ConsumerRecord[Any, Any], ...]:
    """FastStream decoder of a batch subscriber: :func:`records_of`. FastStream's own
    makes a message of each record and tries its value as JSON, which the handlers never
    read (~6 % of the indexer's CPU while it ingests vectors, profiled)."""
    return records_of(message)


def now_ms() -> int:
    return int(time.time() * 1000)


def past_deadline(headers: Mapping[str, str]) -> bool:
    """Whether a request's ``deadline`` header (epoch ms) has passed: checked before its
    body is parsed, so a request nobody waits for any more costs next to nothing."""
    deadline = headers.get(Header.DEADLINE)
    return deadline is not None and deadline.isdigit() and int(deadline) < now_ms()


async def ensure_topics(settings: KafkaSettings, extra: Iterable[str] = ()) -> None:
    """Create the shared topics (idempotent).

    images and vectors are compacted and share a partition count, so per-image order
    holds through the pipeline and a replay from offset 0 rebuilds the current set.
    """
    topics = settings.topics
    compacted = {
        "cleanup.policy": "compact",
        "max.message.bytes": str(settings.max_message_bytes),
        "min.compaction.lag.ms": "60000",
    }
    # Requests live for seconds (their deadline): kept ten minutes, so a new responder
    # group that starts from the earliest offset has little to skip.
    requests = {
        "max.message.bytes": str(settings.max_message_bytes),
        "retention.ms": str(settings.request_retention_ms),
        "segment.ms": str(settings.request_retention_ms),
    }
    others = {"max.message.bytes": str(settings.max_message_bytes)}
    groups = (
        (topics.compacted, compacted),
        (topics.requests, requests),
        ((topics.deadletter, *extra), others),
    )
    wanted = [
        NewTopic(name, settings.partitions, settings.replication_factor, topic_configs=configs)
        for names, configs in groups
        for name in names
    ]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
            log.info("created topics %s", [t.name for t in missing])
            await until_served(admin, [t.name for t in missing])
    finally:
        await admin.close()


async def until_served(
    admin: AIOKafkaAdminClient, names: Sequence[str], timeout_s: float = 10.0
) -> None:
    """Wait until the broker's metadata has each of the topics ``names``, every partition
    with a leader: a client that uses a topic created a moment ago asks for its metadata
    again every few ms and logs each miss as an error (52 lines in one ``make bench``, 395
    when a requester started on a broker started a moment before)."""
    wanted = set(names)
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                found = await admin.describe_topics(list(wanted))
                served = {
                    t["topic"] for t in found
                    if t["error_code"] == 0 and t["partitions"]
                    and all(p["leader"] >= 0 for p in t["partitions"])
                }  # fmt: skip
                if wanted <= served:
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:  # their first users still wait for the metadata themselves
        log.warning("topics %s not all in the broker's metadata after %.0f s",
                    sorted(wanted), timeout_s)  # fmt: skip
