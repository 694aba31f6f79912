"""The embedder's exceptions.

Bad input (undecodable images, broken keys or metadata) is reported with the shared
:class:`imgsim_core.images.ImageError` / :class:`imgsim_core.kafka.EventError`, which carry
the dead-letter ``code``; these are the embedder's own failures.
"""

from __future__ import annotations


class EmbedderError(Exception):
    """Base of the embedder's own errors."""


class ModelLoadError(EmbedderError):
    """The configured model or its weights cannot be loaded (fails the start)."""


class BatcherClosedError(EmbedderError):
    """Work was submitted to a batcher that is not running (or stopped meanwhile)."""


class InferenceError(EmbedderError):
    """The model failed on a batch; every caller with a row in it gets this error."""
