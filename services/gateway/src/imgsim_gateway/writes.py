"""Writing images: image events to the images topic, acknowledged before the answer.

Writes go to the images topic exactly as upstream producers write them (key = image id,
value = raw bytes, ``metadata`` and ``content-type`` headers; a null value deletes) and
are acknowledged by the broker (durable) before the gateway answers. With ``wait=true``
the gateway then asks the indexer for the image's record until it reflects the write
(its source partition and offset reach the write's) or, for a delete, until it is gone.
It asks again each time the indexer has applied a batch
(:class:`~imgsim_gateway.cache.GenerationWatch`), and at least every second (every
100 ms while Redis cannot tell). Asked every 100 ms whatever happened, the answer came
up to 100 ms after the write was searchable: at 2 writes/s, from the vectors record to
the answer p50 51-61 ms, against 35-38 with the watch (a write's whole wait 118-120
against 98-103 ms; bench/RESULTS.md).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import Counter

from imgsim_core.contracts import Metadata
from imgsim_core.kafka import Outage, produced_headers, send_acked
from imgsim_core.topics import Header
from imgsim_gateway.cache import GenerationWatch
from imgsim_gateway.checks import ImageChecks
from imgsim_gateway.errors import UpstreamError, UpstreamTimeoutError
from imgsim_gateway.indexer import IndexerClient
from imgsim_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)
WRITES = Counter(
    "imgsim_gateway_writes",
    "Image events the broker acknowledged (durable), by kind: image or delete.",
    ["kind"],
)
_WAIT_POLL_S = 0.1  # between lookups while Redis cannot tell when a batch lands
_WAIT_FALLBACK_S = 1.0  # between lookups while no batch lands (a bump the indexer owes)


@dataclass(frozen=True, slots=True)
class Written:
    """Where a write landed on the images topic."""

    image_id: str
    partition: int
    offset: int


class Writes:
    def __init__(
        self,
        settings: GatewaySettings,
        producer: AIOKafkaProducer,
        checks: ImageChecks,
        indexer: IndexerClient,
        outage: Outage,
        generation: GenerationWatch,
    ) -> None:
        self.settings = settings
        self.topics = settings.kafka.topics
        self._producer = producer
        self._checks = checks
        self._indexer = indexer
        self._outage = outage  # shared with the indexer client: one Kafka outage
        self._generation = generation

    async def submit_image(self, image_id: str, data: bytes, metadata: Metadata) -> Written:
        """Produce the image event and return once the broker has it (durable)."""
        decode = self.settings.verify_writes == "decode"
        content_type = await self._checks.image(data, decode=decode)
        headers = produced_headers()
        headers += [
            (Header.METADATA, self._checks.metadata(metadata)),
            (Header.CONTENT_TYPE, content_type.encode()),
        ]
        return await self._produce(image_id, data, headers)

    async def delete_image(self, image_id: str) -> Written:
        """Produce a tombstone: the delete flows through the pipeline like any write."""
        return await self._produce(image_id, None, produced_headers())

    async def _produce(
        self, image_id: str, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> Written:
        try:
            meta = await send_acked(
                self._producer, self.topics.images, value, key=image_id.encode(),
                headers=headers, timeout_s=self.settings.kafka.send_timeout_s,
            )  # fmt: skip
        except KafkaError as exc:
            self._outage.failed(exc)
            raise UpstreamError("the event log is unavailable; retry later") from exc
        self._outage.ok()
        WRITES.labels("delete" if value is None else "image").inc()
        return Written(image_id, meta.partition, meta.offset)

    async def wait_visible(self, written: Written, *, deleted: bool) -> None:
        """Return once the write is searchable (or gone); 504 after the bound."""
        bound = self.settings.wait_timeout_s
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            remaining = deadline - time.monotonic()
            seen = await self._generation.current()  # before asking: a batch after it counts
            try:
                record = await self._indexer.lookup(written.image_id, timeout_s=min(3.0, remaining))
            except UpstreamTimeoutError:
                continue
            if deleted and not record.found:
                return
            if (
                not deleted
                and record.found
                and record.source_partition == written.partition
                and record.source_offset is not None
                and record.source_offset >= written.offset
            ):
                return
            pause = _WAIT_POLL_S if seen is None else _WAIT_FALLBACK_S
            await self._generation.moved_from(seen, min(pause, remaining))
        what = "deleted" if deleted else "searchable"
        raise UpstreamTimeoutError(
            f"the write is accepted and durable, but was not {what} within {bound:.0f} s; "
            "it will still be applied"
        )

    async def kafka_ok(self) -> bool:
        try:
            await self._producer.client.fetch_all_metadata()
        except KafkaError:
            return False
        return True
