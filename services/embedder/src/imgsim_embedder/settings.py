"""The embedder's settings: one pydantic-settings class, env prefix ``EMBEDDER_``.

Nested groups use ``__``: ``EMBEDDER_KAFKA__BOOTSTRAP_SERVERS``,
``EMBEDDER_MODEL__WEIGHTS=random``, ``EMBEDDER_MODEL__DTYPE=float32``. Built once in
``__main__`` and passed down; nothing else reads the environment.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from imgsim_core.settings import ImageLimits, KafkaSettings, ModelSettings


class EmbedderSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDDER_", env_nested_delimiter="__")

    kafka: KafkaSettings = KafkaSettings()
    model: ModelSettings = ModelSettings()
    limits: ImageLimits = ImageLimits()
    group_id: str = "imgsim-embedder"
    max_batch: int = Field(
        default=16,
        ge=1,
        description="Most image rows in one bulk forward pass. A search waits for at most "
        "one step of a bulk pass (one transformer block; a slice of one while searches "
        "come, see search_step_rows), so this bounds how long: on the "
        "2-core dev machine with OpenVINO, 16 rows ran at 42-43 img/s with 36 ms steps and "
        "32 rows at 43-44 img/s with 67 ms steps, and a search's p50/p99 under bulk "
        "indexing fell from 143/323 to 98/172 ms. On a GPU, pick it with bench/gpu.py.",
    )
    search_step_rows: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        default="auto",
        description="While searches come (one in the last second), a bulk step runs this "
        "many rows at a time, so a search waits for a slice of a step, not a whole one; "
        "0 = whole steps always. auto: 4 on the CPU, 0 on a GPU (where a step of a bulk "
        "batch takes milliseconds and slices would cost it most of its throughput). On the "
        "2-core dev machine (OpenVINO, 16 rows), with searches at concurrency 1 during bulk "
        "indexing: their p50 65-80 ms against 84-87, bulk work 7.3-7.8 images/s against "
        "11.2-12.5 meanwhile (bench/RESULTS.md, 2026-12-07).",
    )
    max_wait_ms: float = Field(
        default=5, ge=0, description="How long a batch may wait for more rows to fill."
    )
    query_max_batch: int = Field(
        default=16, ge=1, description="Most query rows (search images or texts) in one pass."
    )
    query_max_wait_ms: float = Field(
        default=0,
        ge=0,
        description="How long a query batch may wait for more queries; 0 = run as soon as "
        "the model is free (queries that arrive during a pass form the next batch).",
    )
    preprocess_threads: int = Field(
        default=2,
        ge=1,
        description="Decode + transform threads for bulk images, and as many for query "
        "images (bulk images wait to start while a query is in flight).",
    )
    serve_queries: bool = Field(
        default=True,
        description="Embed search queries too. An embedder of a new model that re-embeds the "
        "images for a model change runs with false until the switch.",
    )
    query_concurrency: int = Field(
        default=16, ge=1, description="Queries handled at once, so they can share a batch."
    )
    model_retries: int = Field(
        default=3,
        ge=0,
        description="Retries of an image batch the model fails on, before its images are "
        "tried alone and those that still fail are dead-lettered (model_error).",
    )
    model_retry_backoff_ms: float = Field(
        default=100, ge=0, description="Wait before the first retry; doubles each retry."
    )
    metrics_port: int = Field(default=0, ge=0, description="Prometheus port; 0 = off.")
    metrics_host: str = "127.0.0.1"
    log_level: str = "INFO"
    json_logs: bool = True

    def step_rows_while_searching(self, on_gpu: bool) -> int:
        """``search_step_rows`` with ``auto`` resolved for where the model runs."""
        if self.search_step_rows == "auto":
            return 0 if on_gpu else 4
        return self.search_step_rows
