"""What each request to the indexer is answered, once it is decoded and in time.

The Kafka side (subscribers, decoding, deadlines) is :mod:`imgsim_indexer.handlers`; here
is only the answer, built from the :class:`~imgsim_indexer.serving.Collections`. Every
outcome is counted by label, and a failure the asker can act on is a reply with an
:class:`~imgsim_core.errors.ErrorCode`, never an exception: an exception in a responder
leaves the asker waiting for its timeout.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter

from imgsim_core.contracts import (
    DuplicatesReplied,
    DuplicatesRequested,
    ImageRecord,
    LookupRequested,
    SearchHit,
    SearchReplied,
    VectorSearchRequested,
    pack_vector,
)
from imgsim_core.errors import ErrorCode
from imgsim_core.tracing import batch_step
from imgsim_indexer.duplicates import find_duplicates
from imgsim_indexer.errors import RequestError, StoreError
from imgsim_indexer.payload import Hit
from imgsim_indexer.queries import query_vector
from imgsim_indexer.serving import Collections

log = logging.getLogger(__name__)

SEARCHES = Counter("imgsim_indexer_searches", "Vector searches answered, by outcome.", ["outcome"])
LOOKUPS = Counter("imgsim_indexer_lookups", "Image lookups answered, by outcome.", ["outcome"])
DUPLICATE_PAGES = Counter(
    "imgsim_indexer_duplicate_pages", "Duplicate pages answered, by outcome.", ["outcome"]
)


def _hit(hit: Hit) -> SearchHit:
    vector = None if hit.vector is None else pack_vector(hit.vector)
    return SearchHit(image_id=hit.image_id, score=hit.score, metadata=hit.metadata, vector=vector)


def _failed(exc: RequestError | StoreError, outcomes: Counter, what: str) -> tuple[str, ErrorCode]:
    """The error reply's message and code, counted: the asker's mistake by its code, the
    store's failure as ``store_error`` (and logged: it is ours)."""
    if isinstance(exc, RequestError):
        outcomes.labels(exc.code).inc()
        return exc.message, exc.code
    log.warning("%s failed: %s", what, exc)
    outcomes.labels("store_error").inc()
    return str(exc), ErrorCode.STORE_ERROR


async def search(
    collections: Collections, request: VectorSearchRequested, dim: int
) -> SearchReplied:
    # A query vector of the model a reindex switched away from searches the collection
    # of that model (kept until dropped), so a model change never mixes vector spaces.
    store = collections.for_model(request.model_id if request.vector is not None else None)
    if store is None:
        SEARCHES.labels("wrong_model").inc()
        return SearchReplied(
            error=f"the query vector comes from model {request.model_id!r}; the index "
            f"holds {collections.model_id!r}",
            error_code=ErrorCode.WRONG_MODEL,
        )
    try:
        vector, exclude = await query_vector(request, store, dim)
        with batch_step("store search"):
            hits = await store.search(
                vector,
                top_k=request.top_k,
                threshold=request.threshold,
                with_metadata=request.include_metadata,
                filter=request.filter,
                exclude=exclude,
                with_vectors=request.include_vectors,
            )
    except (RequestError, StoreError) as exc:
        error, code = _failed(exc, SEARCHES, "search")
        return SearchReplied(error=error, error_code=code)
    SEARCHES.labels("ok").inc()
    return SearchReplied(
        hits=[_hit(h) for h in hits],
        # Echoed so the gateway can cache the embedding the embedder computed.
        query_vector=request.vector,
        model_id=request.model_id if request.vector is not None else None,
    )


async def lookup(collections: Collections, request: LookupRequested) -> ImageRecord:
    live = collections.live
    try:
        stored = await live.get(request.image_id)
        vector = (
            await live.get_vector(request.image_id)
            if stored is not None and request.include_vector
            else None
        )
    except StoreError as exc:
        log.warning("lookup failed: %s", exc)
        LOOKUPS.labels("store_error").inc()
        return ImageRecord(image_id=request.image_id, found=False, error=str(exc))
    LOOKUPS.labels("found" if stored else "not_found").inc()
    if stored is None:
        return ImageRecord(image_id=request.image_id, found=False)
    return ImageRecord(
        image_id=stored.image_id,
        found=True,
        model_id=stored.model_id,
        metadata=stored.metadata,
        indexed_at=stored.indexed_at,
        source_partition=stored.source_partition,
        source_offset=stored.source_offset,
        content_sha256=stored.content_sha256,
        vector=None if vector is None else pack_vector(vector),
    )


async def duplicates(collections: Collections, request: DuplicatesRequested) -> DuplicatesReplied:
    try:
        reply = await find_duplicates(collections.live, request)
    except (RequestError, StoreError) as exc:
        error, code = _failed(exc, DUPLICATE_PAGES, "duplicates")
        return DuplicatesReplied(error=error, error_code=code)
    DUPLICATE_PAGES.labels("ok").inc()
    return reply
