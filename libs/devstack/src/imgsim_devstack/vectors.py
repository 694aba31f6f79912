"""Synthetic CLIP-like vectors, and the vectors-topic records they make, for benchmarks.

CLIP image embeddings crowd into a few directions of the sphere rather than filling it,
which is what makes an approximate index's job easy or hard; uniform random vectors
would make recall look worse and clusters of one point better than real data. So the
vectors here are unit vectors scattered around ``clusters`` random unit centres.
:meth:`ClusteredVectors.records` wraps them in :class:`~imgsim_core.contracts.ImageEmbedded`
JSON, keyed by image id, exactly as the embedder writes them to ``imgsim.vectors``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
from aiokafka import ConsumerRecord

from imgsim_core.contracts import ImageEmbedded, Metadata, pack_vector


class ClusteredVectors:
    """Unit vectors around ``clusters`` random unit centres, reproducible from ``seed``."""

    def __init__(self, dim: int = 512, *, clusters: int = 64, seed: int = 0) -> None:
        self.dim = dim
        self._rng = np.random.default_rng(seed)
        centres = self._rng.normal(size=(clusters, dim)).astype(np.float32)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)

    def take(self, n: int) -> npt.NDArray[np.float32]:
        """The next ``n`` vectors, shape ``(n, dim)``."""
        picks = self._rng.integers(0, len(self.centres), n)
        noise = self._rng.normal(0, 0.35 / np.sqrt(self.dim), (n, self.dim)).astype(np.float32)
        v = self.centres[picks] + noise * 4  # float32 throughout
        unit: npt.NDArray[np.float32] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return unit

    def records(
        self,
        first: int,
        n: int,
        *,
        model_id: str,
        topic: str = "imgsim.vectors",
        partitions: int = 6,
    ) -> Iterator[ConsumerRecord[bytes, bytes]]:
        """Vectors-topic records of images ``img/<first>`` … ``img/<first + n - 1>``, as a
        consumer would read them; each carries :func:`metadata` of its number."""
        now = datetime.now(UTC)
        for i, vector in enumerate(self.take(n), start=first):
            key, value = embedded(i, vector, model_id=model_id, at=now, partitions=partitions)
            yield ConsumerRecord(
                topic, i % partitions, i // partitions, 0, 0,
                key, value, None, 0, len(value), [],
            )  # fmt: skip


def embedded(
    i: int, vector: npt.NDArray[np.float32], *, model_id: str, at: datetime, partitions: int = 6
) -> tuple[bytes, bytes]:
    """The vectors-topic key and value of image ``img/<i>`` with this vector."""
    image_id = f"img/{i}"
    value = ImageEmbedded(
        image_id=image_id,
        model_id=model_id,
        dim=len(vector),
        vector=pack_vector(vector),
        metadata=metadata(i),
        source_partition=i % partitions,
        source_offset=i // partitions,
        embedded_at=at,
    ).model_dump_json()
    return image_id.encode(), value.encode()


def metadata(i: int) -> Metadata:
    """A keyword that 1 % of images share (``tag``, ``t0`` … ``t99``) and a number."""
    return {"tag": f"t{i % 100}", "n": i}


def exact_top(
    vectors: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    k: int,
    only: npt.NDArray[np.bool_] | None = None,
) -> list[set[int]]:
    """The numbers (rows of ``vectors``) of each query's exact top ``k`` by cosine (the
    vectors are unit length), among the rows ``only`` marks when it is given."""
    ids = np.arange(len(vectors)) if only is None else np.flatnonzero(only)
    candidates = vectors if only is None else vectors[ids]
    best: list[set[int]] = []
    for chunk in range(0, len(queries), 64):  # 64 queries × 1M scores: 256 MB at a time
        scores = candidates @ queries[chunk : chunk + 64].T
        top = np.argpartition(-scores, k, axis=0)[:k]
        best.extend({int(i) for i in ids[column]} for column in top.T)
    return best


def recall(found: list[list[int]], exact: list[set[int]]) -> float:
    """The share of each exact top-k that a search found, averaged over the queries."""
    return float(np.mean([len(set(f) & e) / len(e) for f, e in zip(found, exact, strict=True)]))


def number(image_id: str) -> int:
    """``i`` of the image id ``img/<i>``."""
    return int(image_id.split("/")[1])
