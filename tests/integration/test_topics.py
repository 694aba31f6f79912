"""The topics are created with the contract's settings on a real broker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from imgsim_core.kafka import ensure_topics
from imgsim_core.settings import KafkaSettings
from tests.conftest import Services

pytestmark = pytest.mark.integration


async def test_images_and_vectors_are_compacted_alike_and_fit_the_image_limit(
    infra: Services, topic_prefix: str
) -> None:
    settings = KafkaSettings(
        bootstrap_servers=infra.bootstrap, topic_prefix=topic_prefix, partitions=4
    )
    await ensure_topics(settings)
    await ensure_topics(settings)  # idempotent
    topics = settings.topics
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics.all_shared))
        partitions = {t["topic"]: len(t["partitions"]) for t in described}
        assert partitions[topics.images] == partitions[topics.vectors] == 4
        assert set(partitions) == set(topics.all_shared)
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics.compacted]
        )
        configs = {
            resource[3]: {entry[0]: entry[1] for entry in resource[4]}
            for response in responses
            for resource in response.resources
        }
    finally:
        await admin.close()
    for topic in topics.compacted:
        assert configs[topic]["cleanup.policy"] == "compact"
        assert int(configs[topic]["max.message.bytes"]) == settings.max_message_bytes
    assert settings.max_message_bytes > 10 * 1024 * 1024  # the default image limit fits


async def test_request_topics_keep_requests_minutes_not_days(
    infra: Services, topic_prefix: str
) -> None:
    settings = KafkaSettings(bootstrap_servers=infra.bootstrap, topic_prefix=topic_prefix)
    await ensure_topics(settings)
    topics = settings.topics
    requests = list(topics.requests)
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.bootstrap)
    await admin.start()
    try:
        for _ in range(50):  # a just-created topic's configs take a moment to be described
            responses = await admin.describe_configs(
                [
                    ConfigResource(ConfigResourceType.TOPIC, t)
                    for t in [*requests, topics.deadletter]
                ]
            )
            configs = {
                resource[3]: {entry[0]: entry[1] for entry in resource[4]}
                for response in responses
                for resource in response.resources
            }
            if all(configs.get(t) for t in [*requests, topics.deadletter]):
                break
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    for topic in requests:
        assert configs[topic]["retention.ms"] == "600000"
        assert configs[topic]["segment.ms"] == "600000"  # else a segment outlives retention
        assert configs[topic]["cleanup.policy"] == "delete"
    assert int(configs[topics.deadletter]["retention.ms"]) > 600000  # kept for replay
