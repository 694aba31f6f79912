"""Every topic name and header name of the imgsim event contracts, in one place.

The contract version travels in the ``imgsim-contract`` header of every record that imgsim
itself produces; upstream producers may leave it out.
"""

from __future__ import annotations

from dataclasses import dataclass

CONTRACT_VERSION = "1"


class Header:
    """Kafka header names. Values are UTF-8 text."""

    METADATA = "metadata"  # JSON object: the image's metadata
    CONTENT_TYPE = "content-type"  # optional MIME type of an image value (informative only)
    MODEL_ID = "model-id"  # model that produced a vector
    CONTRACT = "imgsim-contract"  # contract version of a record produced by imgsim
    CORRELATION_ID = "correlation_id"  # FastStream's request/reply header
    REPLY_TO = "reply_to"  # FastStream's request/reply header
    DEADLINE = "deadline"  # epoch milliseconds after which nobody waits for the answer
    HEARTBEAT = "imgsim-heartbeat"  # reply topics: the owner is alive (no correlation id)
    REASON = "reason"  # dead letters: why the record was rejected
    SOURCE_TOPIC = "source-topic"
    SOURCE_PARTITION = "source-partition"
    SOURCE_OFFSET = "source-offset"
    ORIGINAL_PREFIX = "original-"  # dead letters: the rejected record's own headers


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names under one prefix (default ``imgsim.``)."""

    prefix: str = "imgsim."

    @property
    def images(self) -> str:
        """Source of truth: key = image id, value = raw image bytes, null value deletes."""
        return f"{self.prefix}images"

    @property
    def vectors(self) -> str:
        """Key = image id, value = :class:`~imgsim_core.contracts.ImageEmbedded` JSON."""
        return f"{self.prefix}vectors"

    @property
    def queries(self) -> str:
        """Searches that need an embedding (:class:`~imgsim_core.contracts.SearchRequested`)."""
        return f"{self.prefix}queries"

    @property
    def searches(self) -> str:
        """Searches with a vector (:class:`~imgsim_core.contracts.VectorSearchRequested`)."""
        return f"{self.prefix}searches"

    @property
    def deadletter(self) -> str:
        """Rejected records with their reason and source offset."""
        return f"{self.prefix}deadletter"

    @property
    def status(self) -> str:
        """Status requests to the indexer (:class:`~imgsim_core.contracts.StatusRequested`)."""
        return f"{self.prefix}status"

    @property
    def lookups(self) -> str:
        """One image's record from the indexer (:class:`~imgsim_core.contracts.LookupRequested`)."""
        return f"{self.prefix}lookups"

    @property
    def duplicates(self) -> str:
        """Duplicate groups (:class:`~imgsim_core.contracts.DuplicatesRequested`)."""
        return f"{self.prefix}duplicates"

    @property
    def admin(self) -> str:
        """Reindex commands to the indexer (:class:`~imgsim_core.contracts.ReindexRequested`)."""
        return f"{self.prefix}admin"

    def replies(self, instance_id: str = "") -> str:
        """The reply topic of one gateway instance (with no id: their common prefix)."""
        return f"{self.prefix}replies.{instance_id}"

    @property
    def compacted(self) -> tuple[str, ...]:
        return (self.images, self.vectors)

    @property
    def requests(self) -> tuple[str, ...]:
        """Request/reply topics: each record lives for its deadline (seconds)."""
        return (self.queries, self.searches, self.status, self.lookups, self.duplicates, self.admin)

    @property
    def all_shared(self) -> tuple[str, ...]:
        return (*self.compacted, *self.requests, self.deadletter)
