"""The production vector store: a Qdrant server or cluster through ``AsyncQdrantClient``.

Decisions:

- Writes use ``wait=True``: ``upsert``/``delete`` return once Qdrant has applied them,
  so the caller may commit its Kafka offsets (at-least-once, see DESIGN.md).
- ``settings.collection`` is an alias, so a reindex can build ``_v2`` and switch the
  alias atomically later. ``open`` resolves it once; reads and writes then go to that
  real collection (``current``), as an Edge store's go to its shard: after a model
  change's switch the old store keeps serving the old model's collection rather than
  follow the alias into the new model's vectors. An indexer started after a switch
  opens the new collection. What ``open`` sets up (the first real collection, the
  dimension check, the payload indexes) is :mod:`imgsim_indexer.server_setup`.
- A client can be injected (unit tests use ``AsyncQdrantClient(location=":memory:")``,
  which speaks the same API); an injected client is not closed by :meth:`close`.
- :meth:`ServerStore._errors` is the one place that turns qdrant-client's errors into
  :class:`~imgsim_indexer.errors.StoreError`.
- Filters: :func:`~imgsim_indexer.qdrant_filters.server_filter`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Mapping, Sequence

from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ApiException

from imgsim_core.contracts import Condition, Vector, point_id
from imgsim_core.settings import QdrantSettings
from imgsim_indexer import server_setup as setup
from imgsim_indexer.errors import StoreError, StoreNotOpenError
from imgsim_indexer.filters import Match
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
        self._search_params = setup.search_params(settings.index)

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
                await setup.create(self._client, self.physical, self.settings, self.dim)
                self.current = self.physical
            else:
                self.current = await setup.behind_alias(self._client, self.settings, self.dim)
            await setup.check_dim(self._client, self.current, self.dim)
            await setup.ensure_payload_indexes(
                self._client, self.current, self.payload_indexes, self.settings.index.on_disk
            )
        log.info("qdrant collection %s → %s", self.collection, self.current)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            await client.close()

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
                search_params=self._search_params,
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
        """Where reads and writes go: the real collection ``open`` found behind the alias,
        or the one this store was opened on by name (a reindex's new collection)."""
        if self.current is None:
            raise StoreNotOpenError("the qdrant store is not open")
        return self.current

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
