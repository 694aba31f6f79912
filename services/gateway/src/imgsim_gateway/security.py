"""Edge security: API keys and rate limits, as FastAPI dependencies.

- API keys (``GATEWAY_API_KEYS``) come as ``X-API-Key`` or ``Authorization: Bearer``
  and are compared in constant time against every configured key. No keys configured
  means no authentication.
- Rate limits (``GATEWAY_RATE_LIMIT``, e.g. ``100/minute``) are fixed windows counted in
  Redis, so they hold across gateway replicas; the caller is the API key (hashed) or else
  the client IP. Over the limit: 429 with ``Retry-After``. If Redis is down the request
  goes through and the event is logged: an outage of the cache never takes the API down.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time

from fastapi import Request
from redis.asyncio import Redis
from redis.exceptions import RedisError

from imgsim_gateway.errors import RateLimitedError, UnauthorizedError
from imgsim_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


def presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def key_matches(presented: str, keys: list[str]) -> bool:
    """Constant time in the presented key's content: every configured key is compared."""
    given = presented.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    return matched


async def require_api_key(request: Request) -> None:
    settings: GatewaySettings = request.app.state.settings
    keys = settings.keys
    if not keys:
        return
    presented = presented_key(request)
    if presented is None:
        raise UnauthorizedError("an API key is required (X-API-Key or Authorization: Bearer)")
    if not key_matches(presented, keys):
        raise UnauthorizedError("the API key is not valid")


def caller_identity(request: Request) -> str:
    key = presented_key(request)
    if key is not None:
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:24]
    return "ip:" + (request.client.host if request.client else "unknown")


async def enforce_rate_limit(request: Request) -> None:
    settings: GatewaySettings = request.app.state.settings
    rate = settings.rate
    if rate is None:
        return
    limit, window = rate
    now = time.time()
    window_start = int(now // window) * window
    key = f"{settings.kafka.topic_prefix}ratelimit:{caller_identity(request)}:{window_start}"
    redis: Redis = request.app.state.redis
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, window + 1)
            count, _ = await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("rate limit not enforced, Redis is unavailable: %s", exc)
        return
    if int(count) > limit:
        retry_after = max(1, int(window_start + window - now + 0.999))
        raise RateLimitedError(
            f"rate limit of {settings.rate_limit} exceeded; retry in {retry_after} s",
            retry_after=retry_after,
        )
