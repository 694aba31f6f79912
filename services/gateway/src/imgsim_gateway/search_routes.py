"""Searching under ``/api/v1``: by image, by examples, by text, by id; duplicate groups."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Response

from imgsim_core.contracts import (
    DuplicatesRequested,
    Example,
    SearchHit,
    SearchParams,
)
from imgsim_gateway.api import (
    API_PREFIX,
    PROTECTED,
    IndexerDep,
    JSONRoute,
    SearchesDep,
    failures,
    floats,
    ms_since,
)
from imgsim_gateway.checks import base64_payload
from imgsim_gateway.schemas import (
    DuplicatesRequest,
    DuplicatesResponse,
    MultiSearchRequest,
    QueryExample,
    SearchOptions,
    SearchRequest,
    SearchResponse,
    SearchResult,
    SimilarSearchRequest,
    TextSearchRequest,
)
from imgsim_gateway.searching import Query as SearchQuery
from imgsim_gateway.searching import Searches

router = APIRouter(prefix=API_PREFIX, dependencies=PROTECTED, route_class=JSONRoute)


async def _search(searches: Searches, query: SearchQuery, options: SearchParams) -> Response:
    """The answer, serialized here by pydantic-core: FastAPI's own handling of a returned
    model validates it once more and encodes it in Python (the route's ``response_model``
    still documents it)."""
    started = time.perf_counter()
    hits, cached = await searches.search(query, options)
    took_ms = ms_since(started)
    answer = SearchResponse(
        results=[_result(h) for h in hits], took_ms=took_ms, cached=cached,
        query_id=str(uuid.uuid4()), total_found=len(hits), search_time_ms=took_ms,
    )  # fmt: skip
    return Response(answer.model_dump_json(), media_type="application/json")


def _result(hit: SearchHit) -> SearchResult:
    return SearchResult(
        image_id=hit.image_id, score=hit.score, metadata=hit.metadata, vector=floats(hit.vector)
    )


def _options(body: SearchOptions) -> SearchParams:
    """The search parameters of a request body, as the domain takes them."""
    return SearchParams.model_validate(body.model_dump(include=set(SearchParams.model_fields)))


@router.post(
    "/search", response_model=SearchResponse, responses=failures(400, 413, 422, 503, 504),
    summary="Search by image",
)  # fmt: skip
async def search(body: SearchRequest, searches: SearchesDep) -> Response:
    """The indexed images most similar to the query image, best first."""
    query = SearchQuery(image=body.image_data, crop=body.crop)
    return await _search(searches, query, _options(body))


def _example(example: QueryExample) -> Example:
    # An image's base64 is checked with the search's other images, on a result-cache miss.
    image = None if example.image_data is None else base64_payload(example.image_data)
    return Example(
        image=image, image_id=example.image_id, text=example.text, weight=example.weight,
        crop=example.crop,
    )  # fmt: skip


@router.post(
    "/search/multi", response_model=SearchResponse,
    responses=failures(400, 404, 413, 422, 503, 504),
    summary="Search by several examples: images, ids and texts, positive and negative, weighted",
)  # fmt: skip
async def search_multi(body: MultiSearchRequest, searches: SearchesDep) -> Response:
    """As Qdrant's recommend API ("average_vector"): with the weighted means P of the
    positive and N of the negative examples' embeddings, the query is P + (P − N),
    normalised. Images named by id are left out of the results."""
    query = SearchQuery(
        positive=tuple(_example(e) for e in body.positive),
        negative=tuple(_example(e) for e in body.negative),
    )
    return await _search(searches, query, _options(body))


@router.post(
    "/duplicates", response_model=DuplicatesResponse, responses=failures(400, 422, 503, 504),
    summary="Groups of duplicate images: exact copies, and near copies above a threshold",
)  # fmt: skip
async def duplicates(body: DuplicatesRequest, indexer: IndexerDep) -> DuplicatesResponse:
    """A page of groups over the collection (or the images ``filter`` selects), scanned in
    a fixed order; follow ``next_cursor`` until it is null. Each pair of duplicates is in
    some group, at the group's first image; a group wholly inside an earlier one is left
    out. A page scans at most 512 images, so it may hold fewer than ``limit`` groups and
    still have a ``next_cursor``."""
    started = time.perf_counter()
    answer = await indexer.duplicates(DuplicatesRequested(**body.model_dump(), deadline_ms=0))
    return DuplicatesResponse.model_validate(
        {**answer.model_dump(include={"groups", "next_cursor", "scanned"}),
         "took_ms": ms_since(started)}
    )  # fmt: skip


@router.post(
    "/search/text", response_model=SearchResponse, responses=failures(400, 422, 503, 504),
    summary="Search by text (CLIP's text tower)",
)  # fmt: skip
async def search_text(body: TextSearchRequest, searches: SearchesDep) -> Response:
    return await _search(searches, SearchQuery(text=body.query), _options(body))


@router.post(
    "/search/similar", response_model=SearchResponse, responses=failures(404, 422, 503, 504),
    summary="More like this: search by an indexed image's id",
)  # fmt: skip
async def search_similar(body: SimilarSearchRequest, searches: SearchesDep) -> Response:
    return await _search(searches, SearchQuery(like_image_id=body.image_id), _options(body))
