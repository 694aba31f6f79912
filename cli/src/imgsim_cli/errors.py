"""What can go wrong, as the CLI reports it: a one-line message, never a traceback."""

from __future__ import annotations


class CliError(Exception):
    """An expected failure; the command prints ``message`` and exits with 1."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ConnectionFailed(CliError):
    """The gateway (or Kafka) cannot be reached at all: nothing else will work either."""


class ApiError(CliError):
    """The gateway answered with an error body ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code)
        self.status = status

    def __str__(self) -> str:
        return f"{self.code} ({self.status}): {self.message}"
