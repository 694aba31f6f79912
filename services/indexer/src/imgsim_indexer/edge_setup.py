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
- Generations: ``<collection>_v<N>`` is a symbolic link to the directory that holds the
  shard, ``.<collection>_v<N>.b<K>`` beside it, so a background index build
  (:mod:`~imgsim_indexer.edge_build`) can make the next generation and switch to it by
  replacing the link atomically (:func:`point_link`). :func:`settle` runs before a shard
  opens: it turns a shard directory of the older layout into generation 0, re-links
  generation 0 if a crash came between its creation and its link, and removes every
  generation the link does not name (a build cut short, or one replaced just before a
  crash). A shard is always loaded by its generation's own path, never through the link.
- :func:`ensure_payload_indexes` runs ``UpdateOperation.create_field_index("metadata.<key>",
  …IndexParams(memory=…))`` for each configured key (and a keyword index on
  ``content_sha256``, for exact duplicates) whose index is missing from
  ``shard.info().payload_schema`` or has another type (indexes persist in the shard).
- Memory (``index.on_disk``, :func:`memory`): a shard that loads with its vectors, codes
  and payload indexes in RAM builds them there with the GIL held (measured at 200k int8,
  ``py-spy --native``: most of it the keyword and numeric indexes' maps and the codes'
  copy); mapped (``Memory.Cold``), the load maps files and :func:`read_in` brings their
  pages into the page cache on another thread.
- No write-ahead log in a new shard (``wal_enabled=False``): the images and vectors topics
  are the log. The store flushes every write before it returns, and the indexer commits
  its offsets only then, so what a crash takes from the shard is replayed from Kafka.
  A flushed write survives a kill: a shard killed 24 times while writing loaded with
  exactly its flushed points each time. The shard's own log took over a third of the
  store's time (batches of 1,024: ``update`` + ``flush`` 28 → 18 µs a point), and the
  indexer's write path, records planned and written, ran 1.25× as fast without it
  (bench/RESULTS.md). Qdrant Edge fixes the log at creation: a shard made with one keeps
  it, loaded with ``wal_enabled`` unset.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Mapping
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
SCHEMA_PARAMS = {
    "keyword": qe.KeywordIndexParams,
    "integer": qe.IntegerIndexParams,
    "float": qe.FloatIndexParams,
    "bool": qe.BoolIndexParams,
}


def edge_config(dim: int, index: VectorIndexSettings, *, wal: bool | None = None) -> qe.EdgeConfig:
    """The shard's configuration: cosine vectors of ``dim``, and the index settings.
    ``wal`` is given when the shard is created (no log, see above) and left unset when
    one loads (as it was created).

    Memory (:func:`memory`): with ``on_disk`` the vectors and int8 codes are memory-mapped
    and left to the page cache (``Memory.Cold``: a load maps them, reading nothing);
    otherwise a load reads the vectors in (``Cached``) and copies the int8 codes into RAM
    (``Pinned``), the originals then only read again to rescore. A segment keeps the
    placement it was written with until a build rewrites it."""
    int8 = index.int8
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(
            size=dim,
            distance=qe.Distance.Cosine,
            memory=memory(index, qe.Memory.Cached),
        ),
        hnsw_config=qe.HnswIndexConfig(
            m=index.hnsw_m,
            ef_construct=index.hnsw_ef_construct,
            full_scan_threshold=FULL_SCAN_THRESHOLD_KB,
        ),
        quantization_config=(
            qe.ScalarQuantizationConfig(
                qe.ScalarType.Int8, quantile=0.99, memory=memory(index, qe.Memory.Pinned)
            )
            if int8
            else None
        ),
        optimizers=qe.EdgeOptimizersConfig(
            indexing_threshold=index.indexing_threshold_kb,
            default_segment_number=index.segments,
            max_segment_size=index.max_segment_size_kb,
        ),
        max_search_threads=index.search_threads,
        wal_enabled=wal,
    )


def memory(index: VectorIndexSettings, in_ram: qe.Memory) -> qe.Memory:
    """``Cold`` (mapped, left to the page cache) with ``on_disk``, else ``in_ram``."""
    return qe.Memory.Cold if index.on_disk else in_ram


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
    shard_path = settle(root, current)
    if shard_path is not None and any(shard_path.iterdir()):
        shard = load_shard(shard_path, edge_config(dim, index), dim)
    else:
        shard_path = generation(root, current, 0)
        shard = qe.EdgeShard.create(str(shard_path), edge_config(dim, index, wal=False))
        point_link(root / current, shard_path)
        log.info("created qdrant-edge shard %s (dim=%d, cosine)", shard_path, dim)
    if not pointer.exists():
        write_atomically(pointer, current)
    return shard, current


def load_shard(path: Path, config: qe.EdgeConfig, dim: int) -> qe.EdgeShard:
    try:
        return qe.EdgeShard.load(str(path), config)
    except Exception as exc:  # qdrant_edge raises plain Exception
        raise StoreConfigError(
            f"qdrant-edge shard {path} does not fit dim={dim}, cosine: {exc}"
        ) from exc


# -- generations ----------------------------------------------------------------------


def generation(root: Path, name: str, k: int) -> Path:
    return root / f".{name}.b{k}"


def generations(root: Path, name: str) -> dict[int, Path]:
    """The generation directories of shard ``name`` on disk, by number."""
    prefix = f".{name}.b"
    found = {}
    for path in root.glob(f"{prefix}*"):
        tail = path.name.removeprefix(prefix)
        if tail.isdigit() and path.is_dir():
            found[int(tail)] = path
    return found


def next_generation(root: Path, name: str) -> Path:
    return generation(root, name, max(generations(root, name), default=-1) + 1)


def live_generation(root: Path, name: str) -> Path | None:
    """The directory the link ``name`` points at (None when there is no shard)."""
    link = root / name
    return link.resolve() if link.is_symlink() and link.exists() else None


def settle(root: Path, name: str) -> Path | None:
    """Bring shard ``name``'s directories to one linked generation (see the module's
    docstring) and return its path, or None when there is no shard yet."""
    link = root / name
    if link.is_symlink() and not link.exists():
        link.unlink()  # a drop cut short: its target is gone
    first = generation(root, name, 0)
    if link.is_dir() and not link.is_symlink():  # the layout before generations
        link.rename(first)
        point_link(link, first)
        log.info("qdrant-edge shard %s moved to %s", link, first.name)
    elif not link.exists() and first.is_dir():
        point_link(link, first)  # created, then a crash before its link
    live = live_generation(root, name)
    for path in generations(root, name).values():
        if path != live:
            log.warning("removing qdrant-edge generation %s that is not in use", path)
            shutil.rmtree(path)
    link.with_name(f".{name}.link").unlink(missing_ok=True)
    return live


def point_link(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` (a sibling) atomically: readers see the old or the new."""
    tmp = link.with_name(f".{link.name}.link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.name)
    tmp.replace(link)


def remove_shard(root: Path, name: str) -> None:
    """Remove shard ``name``: its link first, then its generations."""
    link = root / name
    if link.is_symlink():
        link.unlink()
    elif link.is_dir():  # the layout before generations
        shutil.rmtree(link)
    for path in generations(root, name).values():
        shutil.rmtree(path)


def ensure_payload_indexes(
    shard: qe.EdgeShard, indexes: Mapping[str, str], index: VectorIndexSettings
) -> None:
    """Create each missing index (or one of another type), placed as ``index.on_disk``
    says; an index that exists keeps its placement."""
    existing = {name: info.data_type for name, info in shard.info().payload_schema.items()}
    wanted = {metadata_path(key): kind for key, kind in indexes.items()}
    placement = memory(index, qe.Memory.Pinned)
    for path, kind in {**wanted, CONTENT_SHA256: "keyword"}.items():
        if existing.get(path) != SCHEMA_TYPES[kind]:
            params = SCHEMA_PARAMS[kind](memory=placement)
            shard.update(qe.UpdateOperation.create_field_index(path, params))
            log.info("created qdrant-edge payload index %s (%s, %s)", path, kind, placement)


def read_in(path: Path, stop: Callable[[], bool] = lambda: False) -> int:
    """Read every file under ``path`` once, so a mapped shard's first searches find its
    pages in the page cache rather than fault them in one by one with the GIL held
    (measured at 200k int8: a first pass of 200 searches p99 266 ms without, 9 ms
    after). File reads release the GIL: run it on a thread while the store serves.
    Files that go meanwhile (a build replaced the generation) are skipped; ``stop()``
    ends it early. Returns the bytes read."""
    buffer = bytearray(1 << 20)
    done = 0
    for folder, _, files in os.walk(path):
        for name in files:
            if stop():
                return done
            with contextlib.suppress(OSError), open(os.path.join(folder, name), "rb") as f:
                while read := f.readinto(buffer):
                    done += read
                    if stop():
                        return done
    return done


def write_atomically(path: Path, text: str) -> None:
    """Write a small file so that readers see the old or the new content, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
