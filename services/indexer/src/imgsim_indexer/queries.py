"""A search's query vector: the given one, an indexed image's, or examples combined.

A search has exactly one of ``vector``, ``like_image_id`` and ``positive`` examples; a
search by id uses the stored vector of that image and leaves the image itself out of
the hits; examples (vectors, or ids whose stored vectors are read) are combined by
:func:`combine` and the images they name are left out. Every refusal is a
:class:`~imgsim_indexer.errors.RequestError` with its code, which the responder answers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from imgsim_core.contracts import Example, Vector, VectorSearchRequested, unpack_vector
from imgsim_core.errors import ErrorCode
from imgsim_indexer.errors import RequestError
from imgsim_indexer.store import VectorStore


def combine(positive: Sequence[tuple[Vector, float]], negative: Sequence[tuple[Vector, float]]
            ) -> Vector:  # fmt: skip
    """Qdrant's recommend "average_vector": weighted means P and N, query P + (P − N)."""
    mean_p = _weighted_mean(positive)
    query = mean_p if not negative else 2 * mean_p - _weighted_mean(negative)
    norm = float(np.linalg.norm(query))
    if not np.isfinite(norm) or norm < 1e-6:
        raise RequestError(ErrorCode.BAD_REQUEST, "the examples cancel out: no direction is left")
    return (query / norm).astype(np.float32)


def _weighted_mean(examples: Sequence[tuple[Vector, float]]) -> Vector:
    total = sum(weight for _, weight in examples)
    mean: Vector = np.sum([vector * weight for vector, weight in examples], axis=0) / total
    return mean


def checked(packed: str, dim: int) -> Vector:
    try:
        vector = unpack_vector(packed)
    except ValueError as exc:
        raise RequestError(ErrorCode.BAD_VECTOR, "the vector is not base64 of float32") from exc
    if vector.shape != (dim,):
        raise RequestError(
            ErrorCode.WRONG_DIM,
            f"the vector has dim {vector.size}, the index holds dim {dim}",
        )
    return vector


async def stored_vector(image_id: str, store: VectorStore) -> Vector:
    stored = await store.get_vector(image_id)
    if stored is None:
        raise RequestError(ErrorCode.NOT_FOUND, f"image {image_id} is not indexed")
    return stored


async def example_vector(example: Example, store: VectorStore, dim: int) -> tuple[Vector, float]:
    if example.vector is not None:
        return checked(example.vector, dim), example.weight
    if example.image_id is not None:
        return await stored_vector(example.image_id, store), example.weight
    raise RequestError(ErrorCode.BAD_REQUEST, "an example reaches the indexer as a vector or an id")


async def query_vector(
    request: VectorSearchRequested, store: VectorStore, dim: int
) -> tuple[Vector, tuple[str, ...]]:
    """The vector to search with, and the image ids to leave out."""
    given = (request.vector, request.like_image_id, request.positive or None)
    if sum(part is not None for part in given) != 1:
        raise RequestError(
            ErrorCode.BAD_REQUEST,
            "give exactly one of vector, like_image_id and positive examples",
        )
    if request.negative and not request.positive:
        raise RequestError(ErrorCode.BAD_REQUEST, "negative examples need positive ones")
    if request.like_image_id is not None:
        return await stored_vector(request.like_image_id, store), (request.like_image_id,)
    if request.positive:
        positive = [await example_vector(e, store, dim) for e in request.positive]
        negative = [await example_vector(e, store, dim) for e in request.negative]
        named = (*request.positive, *request.negative)
        return combine(positive, negative), tuple(e.image_id for e in named if e.image_id)
    return checked(request.vector or "", dim), ()
