"""Opening a Qdrant Edge shard on disk, for :mod:`~imgsim_indexer.edge_store`.

Synchronous functions, run on the store's executor when it opens:

- Layout: ``<path>/<collection>/CURRENT`` names the real shard directory
  (``<collection>_v1`` on first open), which sits beside it. CURRENT is the Edge
  counterpart of the server's alias: a reindex can build ``<collection>_v2`` next to it
  and switch by replacing CURRENT atomically (:func:`write_atomically`).
- :func:`open_shard` passes the configuration (:func:`edge_config`) when it loads an
  existing shard, so Qdrant Edge checks it: another dimension fails at start with
  :class:`~imgsim_indexer.errors.StoreConfigError`. The index settings it sets replace
  the persisted ones and apply from the next build; those left unset (Qdrant's defaults,
  and ``quantization="none"``) keep what the shard has, so a shard made with int8 stays
  quantized. :func:`search_params` is what every search asks for.
- :func:`ensure_payload_indexes` runs ``UpdateOperation.create_field_index("metadata.<key>",
  PayloadSchemaType.…)`` for each configured key (and a keyword index on
  ``content_sha256``, for exact duplicates) whose index is missing from
  ``shard.info().payload_schema`` or has another type (indexes persist in the shard).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import qdrant_edge as qe

from imgsim_core.settings import VectorIndexSettings
from imgsim_indexer.errors import StoreConfigError
from imgsim_indexer.filters import metadata_path
from imgsim_indexer.payload import CONTENT_SHA256

log = logging.getLogger(__name__)

CURRENT_FILE = "CURRENT"
# Below this many KB of vectors a segment's search is a scan, even when it is indexed
# (Qdrant's default).
FULL_SCAN_THRESHOLD_KB = 10_000
SCHEMA_TYPES = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "bool": qe.PayloadSchemaType.Bool,
}


def edge_config(dim: int, index: VectorIndexSettings) -> qe.EdgeConfig:
    """The shard's configuration: cosine vectors of ``dim``, and the index settings. With
    int8 quantization the quantized vectors stay in RAM and the originals are
    memory-mapped from disk (read again to rescore)."""
    int8 = index.int8
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(
            size=dim,
            distance=qe.Distance.Cosine,
            memory=qe.Memory.Cached if int8 else None,
        ),
        hnsw_config=qe.HnswIndexConfig(
            m=index.hnsw_m,
            ef_construct=index.hnsw_ef_construct,
            full_scan_threshold=FULL_SCAN_THRESHOLD_KB,
        ),
        quantization_config=(
            qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=0.99, memory=qe.Memory.Pinned)
            if int8
            else None
        ),
        optimizers=qe.EdgeOptimizersConfig(
            indexing_threshold=index.indexing_threshold_kb,
            default_segment_number=index.segments,
        ),
        max_search_threads=index.search_threads,
    )


def search_params(index: VectorIndexSettings) -> qe.SearchParams:
    """Every search's parameters: the HNSW candidates, and rescoring with int8."""
    quantization = (
        qe.QuantizationSearchParams(rescore=True, oversampling=index.oversampling)
        if index.int8
        else None
    )
    return qe.SearchParams(hnsw_ef=index.search_ef, quantization=quantization)


def open_shard(
    root: Path, collection: str, dim: int, physical: str | None, index: VectorIndexSettings
) -> tuple[qe.EdgeShard, str]:
    """The shard ``physical`` (or the one CURRENT names, ``_v1`` at first), created if it is
    not there, and its name; CURRENT is written if it is missing."""
    root.mkdir(parents=True, exist_ok=True)
    pointer = root / CURRENT_FILE
    current = physical or (pointer.read_text().strip() if pointer.exists() else f"{collection}_v1")
    shard_path = root / current
    config = edge_config(dim, index)
    if shard_path.is_dir() and any(shard_path.iterdir()):
        try:
            shard = qe.EdgeShard.load(str(shard_path), config)
        except Exception as exc:  # qdrant_edge raises plain Exception
            raise StoreConfigError(
                f"qdrant-edge shard {shard_path} does not fit dim={dim}, cosine: {exc}"
            ) from exc
    else:
        shard = qe.EdgeShard.create(str(shard_path), config)
        log.info("created qdrant-edge shard %s (dim=%d, cosine)", shard_path, dim)
    if not pointer.exists():
        write_atomically(pointer, current)
    return shard, current


def ensure_payload_indexes(shard: qe.EdgeShard, indexes: Mapping[str, str]) -> None:
    existing = {name: info.data_type for name, info in shard.info().payload_schema.items()}
    wanted = {metadata_path(key): kind for key, kind in indexes.items()}
    for path, kind in {**wanted, CONTENT_SHA256: "keyword"}.items():
        schema = SCHEMA_TYPES[kind]
        if existing.get(path) != schema:
            shard.update(qe.UpdateOperation.create_field_index(path, schema))
            log.info("created qdrant-edge payload index %s (%s)", path, kind)


def write_atomically(path: Path, text: str) -> None:
    """Write a small file so that readers see the old or the new content, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
