"""The one way the services open Redis (the gateway's caches, the indexer's generation),
and the keys they share."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from imgsim_core.settings import RedisSettings


def generation_key(topic_prefix: str) -> str:
    """The result-cache generation counter: the indexer increments it after every batch
    that changed the store, the gateway puts its value into every result key."""
    return f"{topic_prefix}generation"


def make_redis(settings: RedisSettings) -> Redis:
    """A client with timeouts; nothing connects until the first command.

    A command on a pooled connection that a Redis restart closed is retried at once on a
    new connection (twice at most). Without that the first command after a restart
    failed, and the indexer's first cache-generation bump after it was lost, so cached
    results hid a write until their TTL ended.
    """
    return Redis.from_url(
        settings.url,
        socket_timeout=settings.timeout_s,
        socket_connect_timeout=settings.timeout_s,
        retry=Retry(NoBackoff(), 2),
        retry_on_error=[RedisConnectionError],
    )
