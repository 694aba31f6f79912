"""The production vector store: a Qdrant server or cluster through ``AsyncQdrantClient``.

Decisions:

- Writes use ``wait=True``: ``upsert``/``delete`` return once Qdrant has applied them,
  so the caller may commit its Kafka offsets (at-least-once, see DESIGN.md).
- ``settings.collection`` is an alias. On first open the store creates the real
  collection ``<collection>_v1`` (cosine, ``dim``, shards and replicas from the settings)
  and points the alias at it; reads and writes go through the alias, so a reindex can
  build ``_v2`` and switch the alias atomically later. A plain collection that already
  has the alias's name is used as it is (with a warning).
- A collection of another dimension fails at start with
  :class:`~imgsim_indexer.errors.StoreConfigError`.
- A client can be injected (unit tests use ``AsyncQdrantClient(location=":memory:")``,
  which speaks the same API); an injected client is not closed by :meth:`close`.
- :meth:`ServerStore._errors` is the one place that turns qdrant-client's errors into
  :class:`~imgsim_indexer.errors.StoreError`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Sequence

from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ApiException, UnexpectedResponse

from imgsim_core.contracts import Vector, point_id
from imgsim_core.settings import QdrantSettings
from imgsim_indexer.errors import StoreConfigError, StoreError, StoreNotOpenError
from imgsim_indexer.store import (
    IMAGE_ID,
    Hit,
    Point,
    StoredImage,
    hit_from_payload,
    stored_from_payload,
    to_payload,
)

log = logging.getLogger(__name__)

_CLIENT_ERRORS = (ApiException, ValueError, KeyError, OSError, TimeoutError)


class ServerStore:
    """:class:`~imgsim_indexer.store.VectorStore` over a Qdrant server (or its local mode)."""

    name = "qdrant-server"

    def __init__(
        self, settings: QdrantSettings, dim: int, *, client: AsyncQdrantClient | None = None
    ) -> None:
        self.settings = settings
        self.collection: str = settings.collection
        self.dim = dim
        self.current: str | None = None  # the real collection behind the alias
        self._client = client
        self._owns_client = client is None

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        if self._client is None:
            api_key = self.settings.api_key
            self._client = AsyncQdrantClient(
                url=self.settings.url,
                api_key=api_key.get_secret_value() if api_key else None,
                timeout=max(1, math.ceil(self.settings.timeout_s)),
            )
        async with self._errors("open"):
            self.current = await self._ensure_collection(self._client)
            await self._check_dim(self._client, self.current)
        log.info("qdrant collection %s → %s", self.collection, self.current)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            await client.close()

    async def _ensure_collection(self, client: AsyncQdrantClient) -> str:
        aliases = (await client.get_aliases()).aliases
        for alias in aliases:
            if alias.alias_name == self.collection:
                return str(alias.collection_name)
        existing: set[str] = {c.name for c in (await client.get_collections()).collections}
        if self.collection in existing:
            log.warning("%s is a collection, not an alias; using it as it is", self.collection)
            return self.collection
        real = f"{self.collection}_v1"
        if real not in existing:
            with contextlib.suppress(UnexpectedResponse):  # another indexer created it first
                await client.create_collection(
                    real,
                    vectors_config=models.VectorParams(
                        size=self.dim, distance=models.Distance.COSINE
                    ),
                    shard_number=self.settings.shards,
                    replication_factor=self.settings.replicas,
                )
                log.info("created qdrant collection %s (dim=%d, cosine)", real, self.dim)
        with contextlib.suppress(UnexpectedResponse):  # the alias may have appeared meanwhile
            await client.update_collection_aliases(
                change_aliases_operations=[
                    models.CreateAliasOperation(
                        create_alias=models.CreateAlias(
                            collection_name=real, alias_name=self.collection
                        )
                    )
                ]
            )
        return real

    async def _check_dim(self, client: AsyncQdrantClient, real: str) -> None:
        vectors = (await client.get_collection(real)).config.params.vectors
        if isinstance(vectors, models.VectorParams) and vectors.size != self.dim:
            raise StoreConfigError(
                f"qdrant collection {real} has dim={vectors.size}, the indexer expects {self.dim}"
            )

    # -- writes --------------------------------------------------------------------------

    async def upsert(self, points: Sequence[Point]) -> None:
        if not points:
            return
        structs = [
            models.PointStruct(
                id=point_id(p.image_id), vector=p.vector.tolist(), payload=to_payload(p)
            )
            for p in points
        ]
        async with self._errors("upsert"):
            await self._opened().upsert(self.collection, points=structs, wait=True)

    async def delete(self, image_ids: Sequence[str]) -> None:
        if not image_ids:
            return
        selector = models.PointIdsList(points=[point_id(i) for i in image_ids])
        async with self._errors("delete"):
            await self._opened().delete(self.collection, points_selector=selector, wait=True)

    # -- reads ---------------------------------------------------------------------------

    async def search(
        self, vector: Vector, *, top_k: int, threshold: float | None, with_metadata: bool
    ) -> list[Hit]:
        async with self._errors("search"):
            response = await self._opened().query_points(
                self.collection,
                query=vector.tolist(),
                limit=top_k,
                score_threshold=threshold,
                with_payload=True if with_metadata else [IMAGE_ID],
                with_vectors=False,
            )
        return [
            hit_from_payload(p.payload or {}, p.score, with_metadata=with_metadata)
            for p in response.points
        ]

    async def count(self) -> int:
        async with self._errors("count"):
            return (await self._opened().count(self.collection, exact=True)).count

    async def get(self, image_id: str) -> StoredImage | None:
        async with self._errors("get"):
            records = await self._opened().retrieve(
                self.collection, ids=[point_id(image_id)], with_payload=True, with_vectors=False
            )
        if not records or records[0].payload is None:
            return None
        return stored_from_payload(records[0].payload)

    # -- helpers -------------------------------------------------------------------------

    def _opened(self) -> AsyncQdrantClient:
        if self._client is None:
            raise StoreNotOpenError("the qdrant store is not open")
        return self._client

    @contextlib.asynccontextmanager
    async def _errors(self, operation: str) -> AsyncIterator[None]:
        try:
            yield
        except StoreError:
            raise
        except _CLIENT_ERRORS as exc:
            raise StoreError(f"qdrant {operation} failed: {exc}") from exc
