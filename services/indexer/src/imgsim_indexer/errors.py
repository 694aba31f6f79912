"""The indexer's exception tree.

Store implementations translate their client's errors into :class:`StoreError` at one
place each, so handlers catch one narrow type. Bad records are not exceptions here: they
become dead letters (see :mod:`imgsim_indexer.handlers`).
"""

from __future__ import annotations

from imgsim_core.errors import ErrorCode


class IndexerError(Exception):
    """Base class of every error the indexer raises on purpose."""


class StoreError(IndexerError):
    """The vector store failed or refused an operation."""


class StoreNotOpenError(StoreError):
    """The store was used before :meth:`open` or after :meth:`close`."""


class StoreConfigError(StoreError):
    """The existing collection does not fit the settings (e.g. another dimension)."""


class ReindexRefusedError(IndexerError):
    """A reindex cannot run here (another indexer consumes some of the partitions)."""


class NotStartedError(IndexerError):
    """A handler ran before the app's lifespan started what it needs."""


class RequestError(IndexerError):
    """A request the indexer refuses; ``code`` becomes the reply's ``error_code``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class BadFilterError(RequestError):
    """A search filter holds a value the store cannot compare."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.BAD_REQUEST, message)
