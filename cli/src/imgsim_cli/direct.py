"""``--direct``: produce to the images topic as an upstream system would, bypassing the gateway.

Key = image id (UTF-8), value = the raw bytes (null = delete), a ``metadata`` header with
the JSON object and a ``content-type`` header. Each image is checked locally first with
the same intake check as the gateway (:func:`imgsim_core.images.inspect_image`), so a bad
file is reported here instead of becoming a dead letter.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self

from aiokafka.errors import KafkaConnectionError, KafkaError

from imgsim_cli.errors import CliError, ConnectionFailed
from imgsim_cli.responses import Metadata
from imgsim_core.ids import ImageIdError, check_image_id
from imgsim_core.images import CONTENT_TYPES, ImageError, inspect_image
from imgsim_core.kafka import encode_metadata, make_producer, produced_headers
from imgsim_core.settings import ImageLimits, KafkaSettings

SEND_TIMEOUT_S = 30.0


class DirectProducer:
    """An idempotent ``acks=all`` producer on the images topic; each send awaits its ack."""

    def __init__(self, kafka: KafkaSettings, limits: ImageLimits) -> None:
        self._kafka = kafka
        self._limits = limits
        self._topic = kafka.topics.images
        self._producer = make_producer(kafka, linger_ms=kafka.bulk_linger_ms)

    async def __aenter__(self) -> Self:
        try:
            await asyncio.wait_for(self._producer.start(), SEND_TIMEOUT_S)
        except (KafkaError, TimeoutError, OSError) as exc:
            await self._producer.stop()
            raise ConnectionFailed(
                f"cannot connect to Kafka at {self._kafka.bootstrap_servers}: {exc or 'timeout'}"
            ) from None
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._producer.stop()

    async def _send(
        self, image_id: str, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        try:
            await asyncio.wait_for(
                self._producer.send_and_wait(
                    self._topic, value, key=image_id.encode(), headers=headers
                ),
                SEND_TIMEOUT_S,
            )
        except KafkaConnectionError as exc:
            raise ConnectionFailed(
                f"cannot reach Kafka at {self._kafka.bootstrap_servers}: {exc}"
            ) from None
        except TimeoutError:
            raise CliError(f"Kafka did not acknowledge {image_id!r} in time", "timeout") from None
        except KafkaError as exc:
            raise CliError(f"Kafka refused {image_id!r}: {exc}", "kafka_error") from None

    async def index(self, image_id: str, data: bytes, metadata: Metadata) -> None:
        _check_id(image_id)
        encoded = encode_metadata(metadata)
        if len(encoded) > self._limits.max_metadata_bytes:
            raise CliError(
                f"metadata is over {self._limits.max_metadata_bytes} bytes", "metadata_too_large"
            )
        try:
            info = await asyncio.to_thread(inspect_image, data, self._limits)
        except ImageError as exc:
            raise CliError(exc.message, exc.code) from None
        headers = produced_headers(
            metadata=encoded.decode(), content_type=CONTENT_TYPES[info.format]
        )
        await self._send(image_id, data, headers)

    async def delete(self, image_id: str) -> None:
        """A tombstone: the image id with a null value."""
        _check_id(image_id)
        await self._send(image_id, None, produced_headers())


def _check_id(image_id: str) -> None:
    try:
        check_image_id(image_id)
    except ImageIdError as exc:
        raise CliError(f"{image_id!r}: {exc}", "bad_key") from None
