"""Settings groups shared by the services.

Each service owns one ``pydantic-settings`` class with its own env prefix and nests these
groups, e.g. ``INDEXER_KAFKA__BOOTSTRAP_SERVERS``. This module never reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypedDict

from pydantic import BaseModel, Field, SecretStr, model_validator

from imgsim_core.topics import Topics


class Membership(TypedDict):
    """Consumer-group timing, as FastStream's ``subscriber()`` takes it."""

    session_timeout_ms: int
    heartbeat_interval_ms: int


class BulkPolling(TypedDict):
    """How a bulk (batch) subscriber waits for records, as FastStream's ``subscriber()``
    takes it."""

    batch_timeout_ms: int
    fetch_max_wait_ms: int


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = "imgsim."
    partitions: int = Field(default=6, ge=1, description="Partitions of images and vectors.")
    replication_factor: int = Field(default=1, ge=1)
    # Latency paths (queries, searches, replies, lookups): Apache Kafka answers a fetch as
    # soon as a record arrives (fetch.min.bytes=1), so a long wait costs no latency and
    # saves the idle polling of short ones. Measured on 2 cores (bench/RESULTS.md): 5 ms
    # waits cost 64 % of a core while idle and p50 111-122 ms a search; 500 ms, 14 % and
    # 87-93 ms. Not longer: while a partition's records wait in a consumer for more than
    # 100 ms (a busy event loop, a model pass), aiokafka fetches the other partitions
    # alone, and that partition's next records wait until that fetch ends, up to the whole
    # wait when the others get none. With 5 s waits (idle stack 97-102 → 82-86 ms of CPU a
    # second), a search sent while the indexer ingested at full speed timed out after 5 s,
    # and 60 queries of 130 KB at 20 ms each took 5.8 s against 1.2. Brokers that hold
    # every fetch for the full wait need a small value here.
    latency_fetch_max_wait_ms: int = Field(default=500, ge=0)
    latency_linger_ms: int = Field(default=0, ge=0)
    # Bulk paths (images, vectors): the same holds. 50 ms waits cost the idle stack
    # 50 ms of CPU a second more than 500 ms (Kafka 88-95 against 63, the indexer 24
    # against 15, the embedder 16 against 8), and the end-to-end rate was no lower; 5 s
    # waits stalled backlogs as above (end to end 21.4-27.7 against 29.0-32.3 images/s).
    bulk_fetch_max_wait_ms: int = Field(default=500, ge=0)
    bulk_max_records: int = Field(default=64, ge=1)
    # A bulk consumer (images, vectors: FastStream batch subscribers) that finds no
    # records waits this long for some, and after an empty wait sleeps as long again
    # before it looks. A record that comes during the sleep waits for its end: up to
    # 200 ms at FastStream's default, 50 here. Measured at 2 writes/s (bench/RESULTS.md):
    # images topic to vectors topic p90 65-135 ms at 200, 62-64 at 50; idle CPU of the
    # embedder and the indexer 7 and 13-14 ms a second at 200, 10 and 16 at 50 (19-26 and
    # 23-31 at 10).
    bulk_idle_poll_ms: int = Field(default=50, ge=1)
    bulk_linger_ms: int = Field(default=5, ge=0)
    bulk_batch_bytes: int = Field(
        default=1024 * 1024,
        ge=16 * 1024,
        description="Bytes a bulk producer (the embedder's vectors) packs into one batch per "
        "partition. aiokafka's default, 16 KiB, holds five 512-d vectors-topic records: "
        "measured (bench/RESULTS.md), 60,000 of them were produced at 8,400/s with it and "
        "47,000/s with 1 MiB.",
    )
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    request_retention_ms: int = Field(
        default=600_000,
        ge=60_000,
        description="Retention of the request topics (queries, searches, status, lookups, "
        "admin) when the services create them; requests expire in seconds.",
    )
    session_timeout_ms: int = Field(
        default=10_000,
        ge=1000,
        description="Consumer-group session timeout of the workers: how long a killed "
        "worker's partitions wait before the group gives them to another member (the "
        "broker's group.min/max.session.timeout.ms bound it; 6000 and up by default).",
    )
    reply_heartbeat_s: float = Field(
        default=30.0,
        gt=0,
        description="How often a gateway writes a heartbeat record to its own reply topic.",
    )
    orphan_reply_after_s: float = Field(
        default=300.0,
        gt=0,
        description="A gateway deletes another's reply topic after this long with no record "
        "in it, seen on two sweeps in a row (its owner was killed and could not delete it).",
    )
    send_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="How long a produce that a client waits on (a write, a request) may wait "
        "for the broker's acknowledgement before the client is told Kafka is unavailable.",
    )

    @model_validator(mode="after")
    def _orphans_outlive_heartbeats(self) -> KafkaSettings:
        if self.orphan_reply_after_s <= self.reply_heartbeat_s:
            raise ValueError("orphan_reply_after_s must be longer than reply_heartbeat_s")
        return self

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @property
    def membership(self) -> Membership:
        """Group-membership timing for a FastStream subscriber (heartbeats at a third)."""
        return {
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": max(100, self.session_timeout_ms // 3),
        }

    @property
    def bulk_polling(self) -> BulkPolling:
        """The waits of the bulk subscribers (the embedder's images, the indexer's vectors)."""
        return {
            "batch_timeout_ms": self.bulk_idle_poll_ms,
            "fetch_max_wait_ms": self.bulk_fetch_max_wait_ms,
        }


class RedisSettings(BaseModel):
    url: str = "redis://127.0.0.1:6379/0"
    timeout_s: float = Field(default=0.5, gt=0)


class ImageLimits(BaseModel):
    max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, description="Encoded size.")
    max_pixels: int = Field(default=50_000_000, ge=1, description="Width × height.")
    max_metadata_bytes: int = Field(default=16 * 1024, ge=2)


class ModelSettings(BaseModel):
    """Which CLIP weights to load.

    ``weights``: ``pretrained`` (the hub tag in ``pretrained``, cached on disk),
    ``checkpoint`` (a local file in ``checkpoint_path``) or ``random`` (a fixed seed;
    for tests and offline machines only, and logged as a warning).
    """

    name: str = "ViT-B-32"
    weights: Literal["pretrained", "checkpoint", "random"] = "pretrained"
    pretrained: str = "laion2b_s34b_b79k"
    checkpoint_path: Path | None = None
    seed: int = 0
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="auto (cuda when present), cpu, cuda or cuda:N (one embedder per GPU).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    threads: int = Field(
        default=0,
        ge=0,
        description="Inference threads (torch's or OpenVINO's); 0 = theirs. Where the model "
        "runs on OpenVINO or a GPU, torch keeps one thread: it only prepares tensors.",
    )
    runtime: Literal["auto", "torch", "openvino"] = Field(
        default="auto",
        description="What runs the model: torch, or OpenVINO (CPU only: the same weights "
        "converted once, 1.2-1.6x torch's speed here); auto = torch on a GPU, OpenVINO on "
        "the CPU.",
    )
    quantization: Literal["none", "int8"] = Field(
        default="none",
        description="int8: both towers' matrix products in int8 on OpenVINO (NNCF's "
        "post-training quantization, done at the first start and kept in cache_dir); "
        "1.6-1.9x the bf16 speed on a CPU with AVX-512 VNNI, no faster than f32 on one with "
        "AVX2 only (a start there warns). A start refuses it unless its vectors keep cosine "
        ">= 0.99 to float32's on held-out images and captions.",
    )
    calibration_dir: Path | None = Field(
        default=None,
        description="JPEG/PNG images to calibrate int8 on (at least 32; some of your own: "
        "the last 16 by name are held out for the check); unset: built-in synthetic images.",
    )
    cache_dir: Path = Field(
        default=Path("~/.cache/imgsim/openvino"),
        description="Where OpenVINO's converted models are kept, so that only the first "
        "start of a model converts it (~20 s).",
    )

    @property
    def model_id(self) -> str:
        """Identifies the vectors' space: vectors of different ids never mix."""
        if self.weights == "pretrained":
            return f"{self.name}/{self.pretrained}"
        if self.weights == "checkpoint":
            checkpoint = self.checkpoint_path.name if self.checkpoint_path else ""
            return f"{self.name}/checkpoint:{checkpoint}"
        return f"{self.name}/random-seed{self.seed}"


class VectorIndexSettings(BaseModel):
    """How either store indexes and searches the vectors (``INDEXER_QDRANT__INDEX__*``).

    The HNSW and optimizer values apply when a collection or shard is created and to each
    later index build (a server builds in the background; Qdrant Edge when its shard is
    optimized); ``search_ef`` and the rescoring apply to every search. The defaults are
    Qdrant's, except ``search_ef``: on 200k clustered 512-d vectors after a build
    (``bench/store_memory.py``, bench/RESULTS.md 2026-12-04) recall@10 was 0.974 at ef
    128, 0.998 at 256 and 1.000 at 512, search p50 3.7, 4.8 and 7.0 ms: 256 is the least
    of these that holds recall@10 ≥ 0.99 (Qdrant's own default is ef_construct, 100).
    """

    hnsw_m: int = Field(default=16, ge=2, description="Edges per node of the HNSW graph.")
    hnsw_ef_construct: int = Field(
        default=100, ge=4, description="Candidates kept while the graph is built."
    )
    search_ef: int = Field(
        default=256, ge=1, description="Candidates an HNSW search keeps: recall against time."
    )
    quantization: Literal["none", "int8"] = Field(
        default="none",
        description="int8: scalar-quantized vectors searched (in RAM unless on_disk), the "
        "float32 originals on disk (memory-mapped) and read again to rescore each "
        "search's candidates.",
    )
    on_disk: bool = Field(
        default=True,
        description="Vectors, int8 codes and payload indexes in memory-mapped files served "
        "from the page cache, read in on a background thread after each open and build "
        "(false: read into RAM when the store loads, which holds the GIL for the whole "
        "load: 2.9 s for a float32 million here, 6.2 s with int8). Applies to what a "
        "build or a new index writes.",
    )
    oversampling: float = Field(
        default=2.0, ge=1.0, description="With int8: candidates rescored per result asked for."
    )
    indexing_threshold_kb: int | None = Field(
        default=None, ge=0, description="Segments smaller than this are searched by scan "
        "and not indexed (None: Qdrant's default, 10,000 KB, ~4,900 vectors of 512 floats).",
    )  # fmt: skip
    segments: int | None = Field(
        default=None, ge=1, description="Target segment count (None: Qdrant's, from the CPUs)."
    )
    max_segment_size_kb: int | None = Field(
        default=None, ge=1, description="Vectors a segment may hold, in KB (a 512-d float32 "
        "vector is 2 KB); bigger segments search faster and take longer to rebuild (None: "
        "Qdrant's, 200,000 KB per CPU).",
    )  # fmt: skip
    search_threads: int | None = Field(
        default=None, ge=1, description="Qdrant Edge's search threads (None: from the CPUs)."
    )

    @property
    def int8(self) -> bool:
        return self.quantization == "int8"


class EdgeBuildSettings(BaseModel):
    """Qdrant Edge's index builds (``INDEXER_QDRANT__BUILD__*``); a Qdrant server builds
    on its own.

    Points written to a shard land unindexed and are searched by scan until a build turns
    them into HNSW segments. The build runs in a child process on a copy of the shard
    (:mod:`imgsim_indexer.edge_build` says why and how), started when at least
    ``min_points`` points are waiting. 20,000 points of 512 floats are ~40 MB, four times
    Qdrant's indexing threshold, and a scan of them takes ~2 ms here: fewer would
    rebuild often for little, many more leave searches scanning longer.
    """

    enabled: bool = True
    min_points: int = Field(
        default=20_000, ge=1, description="Unindexed points that start a build."
    )
    check_s: float = Field(default=5.0, gt=0, description="How often the unindexed count is read.")
    journal_max_points: int = Field(
        default=200_000, ge=1, description="Points written during a build that are kept in "
        "memory for the built copy (~3 KB each); beyond them the build is abandoned.",
    )  # fmt: skip
    timeout_s: float = Field(default=3600.0, gt=0, description="A longer build is abandoned.")
    nice: int = Field(
        default=10, ge=0, le=19, description="How far below serving the build's CPU priority is."
    )


class QdrantSettings(BaseModel):
    """Vector store: a Qdrant server when ``url`` is set, else embedded Qdrant Edge at ``path``."""

    url: str | None = None
    api_key: SecretStr | None = None
    path: Path = Path("data/qdrant-edge")
    collection: str = "images"
    shards: int = Field(default=1, ge=1)
    replicas: int = Field(default=1, ge=1)
    timeout_s: float = Field(default=10.0, gt=0)
    index: VectorIndexSettings = VectorIndexSettings()
    build: EdgeBuildSettings = EdgeBuildSettings()
