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
- Payload indexes: ``open`` calls ``create_payload_index(collection, "metadata.<key>",
  field_schema=…, wait=True)`` for each configured key (and ``content_sha256``, keyword,
  for exact duplicates) the collection's
  ``payload_schema`` lacks (or holds with another type). qdrant-client's local mode
  ignores payload indexes (it warns), filters still work there.
- Filters: :func:`~imgsim_indexer.qdrant_filters.server_filter`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Mapping, Sequence

from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ApiException, UnexpectedResponse

from imgsim_core.contracts import Condition, Vector, point_id
from imgsim_core.settings import QdrantSettings
from imgsim_indexer.errors import StoreConfigError, StoreError, StoreNotOpenError
from imgsim_indexer.filters import Match, metadata_path
from imgsim_indexer.payload import (
    CONTENT_SHA256,
    IMAGE_ID,
    SCAN_FIELDS,
    Hit,
    PayloadIndexes,
    Point,
    Scanned,
    StoredImage,
    hit_from_payload,
    scanned,
    stored_or_none,
    to_payload,
    vector_or_none,
)
from imgsim_indexer.qdrant_filters import server_filter
from imgsim_indexer.store import check_droppable, collection_version

log = logging.getLogger(__name__)

_CLIENT_ERRORS = (ApiException, ValueError, KeyError, OSError, TimeoutError)
SCHEMA_TYPES = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "bool": models.PayloadSchemaType.BOOL,
}


class ServerStore:
    """:class:`~imgsim_indexer.store.VectorStore` over a Qdrant server (or its local mode)."""

    name = "qdrant-server"

    def __init__(
        self,
        settings: QdrantSettings,
        dim: int,
        *,
        client: AsyncQdrantClient | None = None,
        payload_indexes: PayloadIndexes | None = None,
        physical: str | None = None,
    ) -> None:
        self.settings = settings
        self.physical = physical  # open this collection instead of the alias's
        self.collection: str = settings.collection
        self.dim = dim
        self.payload_indexes = dict(payload_indexes or {})
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
            if self.physical is not None:
                await self._create(self._client, self.physical)
                self.current = self.physical
            else:
                self.current = await self._ensure_collection(self._client)
            await self._check_dim(self._client, self.current)
            await self._ensure_payload_indexes(self._client, self.current)
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
            await self._create(client, real)
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

    async def _create(self, client: AsyncQdrantClient, real: str) -> None:
        if await client.collection_exists(real):
            return
        with contextlib.suppress(UnexpectedResponse):  # another indexer created it first
            await client.create_collection(
                real,
                vectors_config=models.VectorParams(size=self.dim, distance=models.Distance.COSINE),
                shard_number=self.settings.shards,
                replication_factor=self.settings.replicas,
            )
            log.info("created qdrant collection %s (dim=%d, cosine)", real, self.dim)

    # -- collections (the alias) ----------------------------------------------------------

    async def collections(self) -> list[str]:
        """The real collections behind this alias's name, oldest first."""
        prefix = f"{self.collection}_v"
        async with self._errors("list collections"):
            names = [
                c.name
                for c in (await self._opened().get_collections()).collections
                if c.name.startswith(prefix)
            ]
        return sorted(names, key=collection_version)

    async def aliased(self) -> str | None:
        async with self._errors("get aliases"):
            for alias in (await self._opened().get_aliases()).aliases:
                if alias.alias_name == self.collection:
                    return str(alias.collection_name)
        return None

    async def switch_alias(self, physical: str) -> None:
        """Move the alias to ``physical`` in one atomic operation."""
        operations: list[models.AliasOperations] = []
        if await self.aliased() is not None:
            operations.append(
                models.DeleteAliasOperation(
                    delete_alias=models.DeleteAlias(alias_name=self.collection)
                )
            )
        operations.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(
                    collection_name=physical, alias_name=self.collection
                )
            )
        )
        async with self._errors("switch alias"):
            await self._opened().update_collection_aliases(change_aliases_operations=operations)

    async def drop_collection(self, physical: str) -> None:
        check_droppable(physical, self.current, await self.aliased())
        async with self._errors("drop collection"):
            await self._opened().delete_collection(physical)

    async def _check_dim(self, client: AsyncQdrantClient, real: str) -> None:
        vectors = (await client.get_collection(real)).config.params.vectors
        if isinstance(vectors, models.VectorParams) and vectors.size != self.dim:
            raise StoreConfigError(
                f"qdrant collection {real} has dim={vectors.size}, the indexer expects {self.dim}"
            )

    async def _ensure_payload_indexes(self, client: AsyncQdrantClient, real: str) -> None:
        existing = (await client.get_collection(real)).payload_schema
        wanted = {metadata_path(key): kind for key, kind in self.payload_indexes.items()}
        for path, kind in {**wanted, CONTENT_SHA256: "keyword"}.items():
            schema = SCHEMA_TYPES[kind]
            info = existing.get(path)
            if info is None or info.data_type != schema:
                await client.create_payload_index(real, path, field_schema=schema, wait=True)
                log.info("created qdrant payload index %s (%s) on %s", path, kind, real)

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
            await self._opened().upsert(self._target, points=structs, wait=True)

    async def delete(self, image_ids: Sequence[str]) -> None:
        if not image_ids:
            return
        selector = models.PointIdsList(points=[point_id(i) for i in image_ids])
        async with self._errors("delete"):
            await self._opened().delete(self._target, points_selector=selector, wait=True)

    # -- reads ---------------------------------------------------------------------------

    async def search(
        self,
        vector: Vector,
        *,
        top_k: int,
        threshold: float | None,
        with_metadata: bool,
        filter: Mapping[str, Condition] | None = None,
        exclude: Sequence[str] = (),
        with_vectors: bool = False,
    ) -> list[Hit]:
        query_filter = server_filter(filter, exclude)
        async with self._errors("search"):
            response = await self._opened().query_points(
                self._target,
                query=vector.tolist(),
                query_filter=query_filter,
                limit=top_k,
                score_threshold=threshold,
                with_payload=True if with_metadata else [IMAGE_ID],
                with_vectors=with_vectors,
            )
        return [
            hit_from_payload(p.payload or {}, p.score, with_metadata=with_metadata, vector=p.vector)
            for p in response.points
        ]

    async def scan(
        self, *, cursor: str | None, limit: int, filter: Mapping[str, Condition] | None = None
    ) -> tuple[list[Scanned], str | None]:
        async with self._errors("scroll"):
            records, after = await self._opened().scroll(
                self._target, scroll_filter=server_filter(filter, ()), limit=limit, offset=cursor,
                with_payload=SCAN_FIELDS, with_vectors=True,
            )  # fmt: skip
        found = [scanned(r.id, r.payload, r.vector) for r in records]
        return found, None if after is None else str(after)

    async def same_content(
        self, content_sha256: str, *, limit: int, filter: Mapping[str, Condition] | None = None
    ) -> list[str]:
        same = Match(CONTENT_SHA256, content_sha256)
        async with self._errors("scroll"):
            records, _ = await self._opened().scroll(
                self._target, scroll_filter=server_filter(filter, (), same), limit=limit,
                with_payload=[IMAGE_ID], with_vectors=False,
            )  # fmt: skip
        return [(r.payload or {})[IMAGE_ID] for r in records]

    async def count(self) -> int:
        async with self._errors("count"):
            return (await self._opened().count(self._target, exact=True)).count

    async def get(self, image_id: str) -> StoredImage | None:
        async with self._errors("get"):
            records = await self._opened().retrieve(
                self._target, ids=[point_id(image_id)], with_payload=True, with_vectors=False
            )
        return stored_or_none(records[0].payload if records else None)

    async def sample_model(self) -> str | None:
        async with self._errors("scroll"):
            records, _ = await self._opened().scroll(
                self._target, limit=1, with_payload=True, with_vectors=False
            )
        stored = stored_or_none(records[0].payload if records else None)
        return None if stored is None else stored.model_id

    async def get_vector(self, image_id: str) -> Vector | None:
        async with self._errors("get_vector"):
            records = await self._opened().retrieve(
                self._target, ids=[point_id(image_id)], with_payload=False, with_vectors=True
            )
        return vector_or_none(records[0].vector if records else None)

    # -- helpers -------------------------------------------------------------------------

    @property
    def _target(self) -> str:
        """Where reads and writes go: the alias, or the real collection this store was
        opened on by name (a reindex's new collection, before the alias points at it)."""
        return self.physical or self.collection

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
