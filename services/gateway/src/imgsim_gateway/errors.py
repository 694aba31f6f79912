"""The gateway's exceptions; ``app.py`` maps them to HTTP in one place.

Every error body has one shape: ``{"error": {"code": "...", "message": "..."}}``.
"""

from __future__ import annotations


class GatewayError(Exception):
    status_code = 500
    code = "internal_error"
    retry_after: int | None = None  # seconds, sent as Retry-After

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequestError(GatewayError):
    status_code = 400
    code = "bad_request"


class InvalidImageError(GatewayError):
    """An image that is corrupt, of a format not allowed, or too large."""

    status_code = 422
    code = "invalid_image"


class UnauthorizedError(GatewayError):
    status_code = 401
    code = "unauthorized"


class NotFoundError(GatewayError):
    status_code = 404
    code = "not_found"


class RateLimitedError(GatewayError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PayloadTooLargeError(GatewayError):
    status_code = 413
    code = "payload_too_large"


class UpstreamTimeoutError(GatewayError):
    """No answer from the pipeline before the deadline (the write, if any, goes on)."""

    status_code = 504
    code = "timeout"


class UpstreamError(GatewayError):
    """A service behind the gateway answered with an error."""

    status_code = 503
    code = "unavailable"
    retry_after = 5
