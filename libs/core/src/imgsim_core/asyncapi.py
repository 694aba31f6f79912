"""The published contract for Kafka producers and consumers, as an AsyncAPI 3.0 document.

FastStream generates the document from a broker that declares every topic of the
contract with its payload model (this module's :func:`contract_broker`); the generated
document is then completed with what FastStream cannot express itself: each message's
Kafka key and headers. The gateway serves it at ``/asyncapi.json`` and renders the same
document at ``/asyncapi`` (:class:`Completed`),
``docs/asyncapi.json`` holds a copy, and a test checks that both match the code and that
every topic the services consume is in it.
"""

from __future__ import annotations

import json
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from imgsim_core import __version__
from imgsim_core.contracts import (
    DuplicatesReplied,
    DuplicatesRequested,
    ImageEmbedded,
    ImageRecord,
    IndexerStatus,
    LookupRequested,
    ReindexRequested,
    ReindexStatus,
    SearchReplied,
    SearchRequested,
    StatusRequested,
    VectorSearchRequested,
)
from imgsim_core.topics import CONTRACT_VERSION, Header, Topics

_TEXT = {"type": "string"}
_TRACE = {
    "traceparent": {**_TEXT, "description": "W3C trace context (optional)."},
    "tracestate": {**_TEXT, "description": "W3C trace state (optional)."},
}
_PRODUCED = {Header.CONTRACT: {**_TEXT, "description": f"Contract version ({CONTRACT_VERSION})."}}
_REQUEST = {
    Header.CORRELATION_ID: {**_TEXT, "description": "Echoed in the reply."},
    Header.REPLY_TO: {**_TEXT, "description": "The asker's reply topic."},
    Header.DEADLINE: {**_TEXT, "description": "Epoch ms; the request is dropped after it."},
}
_DOCUMENT_ONLY = "declared for the contract document; the services implement it"
_IMAGE_ID_KEY = {"type": "string", "description": "The image id, UTF-8, 1–256 characters."}

# Per channel title: (key schema, header schemas, required headers, extra description).
_ENRICH: dict[str, tuple[dict[str, Any] | None, dict[str, Any], list[str], str]] = {
    "images": (
        _IMAGE_ID_KEY,
        {
            Header.METADATA: {**_TEXT, "description": "A JSON object: the image's metadata."},
            Header.CONTENT_TYPE: {**_TEXT, "description": "MIME type (informative; sniffed)."},
            **_TRACE,
        },
        [],
        "Value: the raw image bytes (JPEG, PNG, WebP, GIF, BMP; no base64). "
        "A null value (tombstone) deletes the image. Compacted.",
    ),
    "vectors": (
        _IMAGE_ID_KEY,
        {Header.MODEL_ID: {**_TEXT, "description": "Model of the vector."}, **_PRODUCED, **_TRACE},
        [],
        "A null value (tombstone) deletes the image. Compacted; same partitions as images.",
    ),
    "queries": (None, {**_REQUEST, **_TRACE}, [Header.CORRELATION_ID, Header.REPLY_TO], ""),
    "searches": (None, {**_REQUEST, **_TRACE}, [Header.CORRELATION_ID, Header.REPLY_TO], ""),
    "status": (None, {**_REQUEST, **_TRACE}, [Header.CORRELATION_ID, Header.REPLY_TO], ""),
    "lookups": (None, {**_REQUEST, **_TRACE}, [Header.CORRELATION_ID, Header.REPLY_TO], ""),
    "duplicates": (None, {**_REQUEST, **_TRACE}, [Header.CORRELATION_ID, Header.REPLY_TO], ""),
    "admin": (None, {**_REQUEST, **_TRACE}, [Header.CORRELATION_ID, Header.REPLY_TO], ""),
    "replies": (None, {Header.CORRELATION_ID: _TEXT, **_TRACE}, [Header.CORRELATION_ID], ""),
    "deadletter": (
        {"type": "string", "description": "The rejected record's original key."},
        {
            Header.REASON: {**_TEXT, "description": "<code>: <message>"},
            Header.SOURCE_TOPIC: _TEXT,
            Header.SOURCE_PARTITION: _TEXT,
            Header.SOURCE_OFFSET: _TEXT,
            f"{Header.ORIGINAL_PREFIX}<name>": {
                **_TEXT,
                "description": "Each header of the rejected record, prefixed.",
            },
            **_TRACE,
        },
        [Header.REASON, Header.SOURCE_TOPIC, Header.SOURCE_PARTITION, Header.SOURCE_OFFSET],
        "Value: the rejected record's original value.",
    ),
}


def contract_broker(topics: Topics, bootstrap: str = "kafka:9092") -> KafkaBroker:
    """A broker that declares every topic of the contract (never connected)."""
    broker = KafkaBroker(bootstrap)
    replies = topics.replies("{gateway}")

    @broker.subscriber(topics.images, title="images", description="Images to index or delete.")
    async def images(body: bytes) -> None: ...

    @broker.subscriber(topics.vectors, title="vectors", description="Image vectors (CLIP).")
    async def vectors(body: ImageEmbedded) -> None: ...

    @broker.subscriber(topics.queries, title="queries", description="Searches to embed.")
    async def queries(body: SearchRequested) -> None: ...

    @broker.subscriber(topics.searches, title="searches", description="Vector searches.")
    @broker.publisher(replies, title="replies", description="Answers: SearchReplied, ...")
    async def searches(body: VectorSearchRequested) -> SearchReplied:
        raise NotImplementedError(_DOCUMENT_ONLY)

    @broker.subscriber(topics.status, title="status", description="Indexer status requests.")
    async def status(body: StatusRequested) -> IndexerStatus:
        raise NotImplementedError(_DOCUMENT_ONLY)

    @broker.subscriber(topics.lookups, title="lookups", description="One image's record.")
    async def lookups(body: LookupRequested) -> ImageRecord:
        raise NotImplementedError(_DOCUMENT_ONLY)

    @broker.subscriber(
        topics.duplicates, title="duplicates", description="A page of duplicate groups."
    )
    async def duplicates(body: DuplicatesRequested) -> DuplicatesReplied:
        raise NotImplementedError(_DOCUMENT_ONLY)

    @broker.subscriber(topics.admin, title="admin", description="Reindex commands.")
    async def admin(body: ReindexRequested) -> ReindexStatus:
        raise NotImplementedError(_DOCUMENT_ONLY)

    @broker.subscriber(topics.deadletter, title="deadletter", description="Rejected records.")
    async def deadletter(body: bytes) -> None: ...

    return broker


def asyncapi_document(topics: Topics | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the contract, as JSON-ready data."""
    topics = topics or Topics()
    spec = AsyncAPI(
        contract_broker(topics),
        title="imgsim event contracts",
        version=f"{__version__} (contract {CONTRACT_VERSION})",
        description="Topics, keys, headers and payloads of imgsim. Produce images to "
        f"{topics.images} with any Kafka client.",
    ).to_specification()
    document: dict[str, Any] = json.loads(spec.to_json())
    for channel in document.get("channels", {}).values():
        title = _channel_title(channel, topics)
        if title not in _ENRICH:
            continue
        key, headers, required, extra = _ENRICH[title]
        if extra:
            channel["description"] = f"{channel.get('description', '')} {extra}".strip()
        for ref in channel.get("messages", {}).values():
            name = ref["$ref"].rsplit("/", 1)[-1]
            message = document["components"]["messages"][name]
            message["headers"] = {"type": "object", "properties": headers, "required": required}
            if key is not None:
                message.setdefault("bindings", {})["kafka"] = {
                    "key": key,
                    "bindingVersion": "0.5.0",
                }
    return document


class Completed:
    """The completed document in the shape FastStream's AsyncAPI page reads of a
    specification (``title``, ``to_json()``), so ``/asyncapi`` shows exactly what
    ``/asyncapi.json`` serves: keys and headers included."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    @property
    def title(self) -> str:
        return str(self.document.get("info", {}).get("title", "imgsim"))

    def to_json(self) -> str:
        return json.dumps(self.document)


def _channel_title(channel: dict[str, Any], topics: Topics) -> str:
    address = str(channel.get("address", ""))
    if address.startswith(topics.replies("")):
        return "replies"
    return address.removeprefix(topics.prefix)


def main() -> None:
    """Write the document to stdout (``python -m imgsim_core.asyncapi > docs/asyncapi.json``)."""
    import sys

    sys.stdout.write(json.dumps(asyncapi_document(), indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
