"""The published AsyncAPI document matches the code, and covers every consumed topic."""

from __future__ import annotations

import json
from pathlib import Path

from faststream.kafka import KafkaBroker

from imgsim_core.asyncapi import asyncapi_document
from imgsim_core.topics import Topics
from imgsim_embedder.app import create_app as create_embedder
from imgsim_embedder.settings import EmbedderSettings
from imgsim_indexer.app import create_app as create_indexer
from imgsim_indexer.settings import IndexerSettings

DOCUMENT = Path(__file__).resolve().parents[1] / "docs" / "asyncapi.json"


def test_checked_in_document_matches_the_code() -> None:
    checked_in = json.loads(DOCUMENT.read_text())
    assert checked_in == json.loads(json.dumps(asyncapi_document())), (
        "docs/asyncapi.json is stale: run `uv run python -m imgsim_core.asyncapi "
        "> docs/asyncapi.json`"
    )


def test_every_topic_the_services_consume_is_documented_with_a_payload() -> None:
    document = asyncapi_document()
    addresses = {channel["address"] for channel in document["channels"].values()}
    consumed: set[str] = set()
    for app in (create_embedder(EmbedderSettings()), create_indexer(IndexerSettings())):
        broker = app.broker
        assert isinstance(broker, KafkaBroker)
        for subscriber in broker.subscribers:
            consumed.update(topic.name for topic in getattr(subscriber, "topics", ()))
    assert consumed
    assert consumed <= addresses
    assert set(Topics().all_shared) <= addresses
    for message in document["components"]["messages"].values():
        assert "payload" in message
        assert "headers" in message


def test_images_channel_documents_key_headers_and_tombstones() -> None:
    document = asyncapi_document()
    images = document["channels"]["images"]
    assert "tombstone" in images["description"]
    message = document["components"]["messages"]["images:SubscribeMessage"]
    assert set(message["headers"]["properties"]) >= {"metadata", "content-type"}
    assert message["bindings"]["kafka"]["key"]["type"] == "string"
