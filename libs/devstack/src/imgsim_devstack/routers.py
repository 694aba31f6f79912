"""For tests: the Kafka consumers a FastStream router's subscribers will start.

FastStream keeps each subscriber's aiokafka consumer arguments (``fetch_max_wait_ms``,
``auto_offset_reset``, ...) in a private attribute; this is the one place that reads it.
"""

from __future__ import annotations

from typing import Any


def consumer_args(router: Any) -> dict[tuple[str, str | None], dict[str, Any]]:
    """(topic, group id) → the consumer arguments of the subscriber that reads it."""
    consumers: dict[tuple[str, str | None], dict[str, Any]] = {}
    for subscriber in router.subscribers:  # Kafka subscribers (FastStream's usecase API)
        args = dict(getattr(subscriber, "_connection_args", {}))
        group = getattr(subscriber, "group_id", None)
        for topic in getattr(subscriber, "topic_names", ()):
            consumers[(str(topic), group)] = args
    return consumers
