"""Setting up a collection on a Qdrant server, for :mod:`~imgsim_indexer.server_store`.

Functions of the client, run once when a store opens (errors are turned into
:class:`~imgsim_indexer.errors.StoreError` by the store):

- :func:`behind_alias`: the real collection behind ``settings.collection``. On first open
  it creates ``<collection>_v1`` and points the alias at it; a plain collection that
  already has the alias's name is used as it is, with a warning.
- :func:`create`: cosine, ``dim``, shards and replicas, HNSW, optimizer and quantization
  settings (``settings.index``; with int8 the originals are on disk, the quantized
  vectors in RAM). Creating and aliasing tolerate another indexer doing the same at the
  same moment. :func:`search_params` is what every search asks for.
- :func:`check_dim`: a collection of another dimension is a
  :class:`~imgsim_indexer.errors.StoreConfigError`, at start rather than at the first write.
- :func:`ensure_payload_indexes`: ``create_payload_index(..., wait=True)`` for each
  configured ``metadata.<key>`` (and ``content_sha256``, keyword, for exact duplicates)
  that the collection's ``payload_schema`` lacks or holds with another type.
  qdrant-client's local mode ignores payload indexes (it warns); filters still work there.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping

from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from imgsim_core.settings import QdrantSettings, VectorIndexSettings
from imgsim_indexer.errors import StoreConfigError
from imgsim_indexer.filters import metadata_path
from imgsim_indexer.payload import CONTENT_SHA256

log = logging.getLogger(__name__)

SCHEMA_TYPES = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "bool": models.PayloadSchemaType.BOOL,
}


# The same indexes memory-mapped (``on_disk``), as the server spells them.
ON_DISK_SCHEMAS: dict[str, models.PayloadFieldSchema] = {
    "keyword": models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, on_disk=True),
    "integer": models.IntegerIndexParams(
        type=models.IntegerIndexType.INTEGER, lookup=True, range=True, on_disk=True
    ),
    "float": models.FloatIndexParams(type=models.FloatIndexType.FLOAT, on_disk=True),
    "bool": models.BoolIndexParams(type=models.BoolIndexType.BOOL, on_disk=True),
}


def field_schema(kind: str, on_disk: bool) -> models.PayloadFieldSchema:
    """The payload index of ``kind``, memory-mapped with ``on_disk`` (else in RAM)."""
    return ON_DISK_SCHEMAS[kind] if on_disk else SCHEMA_TYPES[kind]


async def behind_alias(client: AsyncQdrantClient, settings: QdrantSettings, dim: int) -> str:
    alias_name = settings.collection
    for alias in (await client.get_aliases()).aliases:
        if alias.alias_name == alias_name:
            return str(alias.collection_name)
    existing: set[str] = {c.name for c in (await client.get_collections()).collections}
    if alias_name in existing:
        log.warning("%s is a collection, not an alias; using it as it is", alias_name)
        return alias_name
    real = f"{alias_name}_v1"
    if real not in existing:
        await create(client, real, settings, dim)
    with contextlib.suppress(UnexpectedResponse):  # the alias may have appeared meanwhile
        await client.update_collection_aliases(
            change_aliases_operations=[
                models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name=real, alias_name=alias_name)
                )
            ]
        )
    return real


async def create(client: AsyncQdrantClient, real: str, settings: QdrantSettings, dim: int) -> None:
    if await client.collection_exists(real):
        return
    with contextlib.suppress(UnexpectedResponse):  # another indexer created it first
        index = settings.index
        int8 = index.int8
        await client.create_collection(
            real,
            vectors_config=models.VectorParams(
                size=dim,
                distance=models.Distance.COSINE,
                on_disk=True if int8 or index.on_disk else None,
            ),
            shard_number=settings.shards,
            replication_factor=settings.replicas,
            hnsw_config=models.HnswConfigDiff(m=index.hnsw_m, ef_construct=index.hnsw_ef_construct),
            optimizers_config=models.OptimizersConfigDiff(
                indexing_threshold=index.indexing_threshold_kb,
                default_segment_number=index.segments,
                max_segment_size=index.max_segment_size_kb,
            ),
            quantization_config=(
                models.ScalarQuantization(
                    scalar=models.ScalarQuantizationConfig(
                        type=models.ScalarType.INT8, quantile=0.99, always_ram=not index.on_disk
                    )
                )
                if int8
                else None
            ),
        )
        log.info("created qdrant collection %s (dim=%d, cosine)", real, dim)


async def check_dim(client: AsyncQdrantClient, real: str, dim: int) -> None:
    vectors = (await client.get_collection(real)).config.params.vectors
    if isinstance(vectors, models.VectorParams) and vectors.size != dim:
        raise StoreConfigError(
            f"qdrant collection {real} has dim={vectors.size}, the indexer expects {dim}"
        )


async def ensure_payload_indexes(
    client: AsyncQdrantClient, real: str, indexes: Mapping[str, str], on_disk: bool
) -> None:
    """Create each missing index (or one of another type); one that exists keeps its
    placement."""
    existing = (await client.get_collection(real)).payload_schema
    wanted = {metadata_path(key): kind for key, kind in indexes.items()}
    for path, kind in {**wanted, CONTENT_SHA256: "keyword"}.items():
        info = existing.get(path)
        if info is None or info.data_type != SCHEMA_TYPES[kind]:
            schema = field_schema(kind, on_disk)
            await client.create_payload_index(real, path, field_schema=schema, wait=True)
            log.info("created qdrant payload index %s (%s) on %s", path, kind, real)


def search_params(index: VectorIndexSettings) -> models.SearchParams:
    """Every search's parameters: the HNSW candidates, and rescoring with int8."""
    quantization = (
        models.QuantizationSearchParams(rescore=True, oversampling=index.oversampling)
        if index.int8
        else None
    )
    return models.SearchParams(hnsw_ef=index.search_ef, quantization=quantization)
