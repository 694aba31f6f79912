"""The REST API under ``/api/v1``: the seed's endpoints plus the image lifecycle."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, Response, UploadFile
from fastapi import status as http
from pydantic import AfterValidator, JsonValue, TypeAdapter, ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.convertors import PathConvertor, register_url_convertor

from imgsim_core import __version__
from imgsim_core.contracts import (
    DuplicatesRequested,
    Example,
    FiniteMetadata,
    ReindexStatus,
    SearchHit,
    SearchParams,
    unpack_vector,
)
from imgsim_core.ids import IMAGE_ID_RULE, MAX_IMAGE_ID_LENGTH, check_image_id
from imgsim_gateway.checks import decode_base64
from imgsim_gateway.content import MAX_THUMBNAIL, ContentGoneError, ContentReader, etag
from imgsim_gateway.errors import BadRequestError, GatewayError, NotFoundError, UpstreamError
from imgsim_gateway.indexer import IndexerClient
from imgsim_gateway.kafkastats import KafkaStats
from imgsim_gateway.schemas import (
    BatchIndexRequest,
    BatchIndexResponse,
    BatchItemResult,
    DeleteAccepted,
    DuplicatesRequest,
    DuplicatesResponse,
    ErrorBody,
    ErrorDetail,
    Health,
    ImageInfo,
    IndexAccepted,
    IndexRequest,
    MultiSearchRequest,
    QueryExample,
    Readiness,
    ReindexRequest,
    SearchOptions,
    SearchRequest,
    SearchResponse,
    SearchResult,
    SimilarSearchRequest,
    Stats,
    TextSearchRequest,
    TopicLag,
)
from imgsim_gateway.searching import Query as SearchQuery
from imgsim_gateway.searching import Searches
from imgsim_gateway.security import enforce_rate_limit, require_api_key
from imgsim_gateway.writes import Writes

log = logging.getLogger(__name__)
_METADATA: TypeAdapter[dict[str, JsonValue]] = TypeAdapter(FiniteMetadata)


def _errors(*codes: int) -> dict[int | str, dict[str, object]]:
    text = {
        400: "Bad input: invalid base64, metadata over its limit, bad multipart fields.",
        401: "No valid API key (X-API-Key or Authorization: Bearer).",
        404: "No such image.",
        413: "The body or the image is over its size limit.",
        422: "A corrupt image, a format not allowed, too many pixels, or an invalid field.",
        429: "Over the rate limit; see Retry-After.",
        503: "Kafka or a service behind the gateway is unavailable.",
        504: "No answer before the deadline (a write still happens).",
    }
    return {c: {"model": ErrorBody, "description": text[c]} for c in (401, 429, *codes)}


# Health stays open; everything else needs a key (when keys are set) and is rate-limited.
open_router = APIRouter(prefix="/api/v1", tags=["health"])
router = APIRouter(
    prefix="/api/v1", dependencies=[Depends(require_api_key), Depends(enforce_rate_limit)]
)


def _writes(request: Request) -> Writes:
    result: Writes = request.app.state.writes
    return result


def _searches(request: Request) -> Searches:
    result: Searches = request.app.state.searches
    return result


def _indexer(request: Request) -> IndexerClient:
    result: IndexerClient = request.app.state.indexer
    return result


WritesDep = Annotated[Writes, Depends(_writes)]
SearchesDep = Annotated[Searches, Depends(_searches)]
IndexerDep = Annotated[IndexerClient, Depends(_indexer)]
Wait = Annotated[
    bool, Query(description="Answer only once the change is searchable (or gone); 504 after "
                "a bound, and the write still happens.")
]  # fmt: skip
CheckDuplicates = Annotated[
    bool, Query(description="Say in duplicate_of which indexed images have exactly these "
                "bytes (one more request to the indexer).")
]  # fmt: skip


class _AnyPath(PathConvertor):
    """Starlette's ``path`` matches no line break, so an id with one (invalid) would get a
    routing 404; this matches every character, and the id rule answers 422 instead."""

    regex = r"[\s\S]+"


register_url_convertor("imageid", _AnyPath())
ImageIdPath = Annotated[
    str,
    Path(min_length=1, max_length=MAX_IMAGE_ID_LENGTH, description=IMAGE_ID_RULE,
         examples=["cats/1.jpg"]),
    AfterValidator(check_image_id),
]  # fmt: skip


async def _index(writes: Writes, indexer: IndexerClient, image_id: str, data: bytes,
                 metadata: dict[str, JsonValue], wait: bool, check_duplicates: bool = False
                 ) -> IndexAccepted:  # fmt: skip
    started = time.perf_counter()
    # Asked before the write is indexed, so the image's own earlier upload of the same
    # bytes (a retry) is the one id left out.
    same = asyncio.create_task(indexer.same_content(data)) if check_duplicates else None
    try:
        written = await writes.submit_image(image_id, data, metadata)
        if wait:
            await writes.wait_visible(written, deleted=False)
        duplicate_of = None if same is None else [i for i in await same if i != image_id]
    finally:
        if same is not None and not same.done():
            same.cancel()
    message = f"image {image_id!r} " + ("is searchable" if wait else "is queued for indexing")
    if duplicate_of:
        message += "; already present as " + ", ".join(repr(i) for i in duplicate_of[:3])
    return IndexAccepted(
        image_id=image_id, status="indexed" if wait else "accepted", message=message,
        processing_time_ms=_ms_since(started), duplicate_of=duplicate_of,
    )  # fmt: skip


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


@router.post(
    "/index", status_code=http.HTTP_202_ACCEPTED, response_model=IndexAccepted,
    responses=_errors(400, 413, 422, 503, 504), summary="Index an image (base64 JSON)",
)  # fmt: skip
async def index_image(
    body: IndexRequest,
    writes: WritesDep,
    indexer: IndexerDep,
    wait: Wait = False,
    check_duplicates: CheckDuplicates = False,
) -> IndexAccepted:
    """Queue the image; it is durable in Kafka when this answers. The same id replaces it."""
    data = decode_base64(body.image_data)
    return await _index(writes, indexer, body.image_id, data, body.metadata, wait, check_duplicates)


@router.post(
    "/images", status_code=http.HTTP_202_ACCEPTED, response_model=IndexAccepted,
    responses=_errors(400, 413, 422, 503, 504), summary="Index an image (multipart upload)",
)  # fmt: skip
async def upload_image(
    writes: WritesDep,
    indexer: IndexerDep,
    file: Annotated[UploadFile, File(description="The image file.")],
    image_id: Annotated[
        str,
        Form(min_length=1, max_length=MAX_IMAGE_ID_LENGTH, description=IMAGE_ID_RULE),
        AfterValidator(check_image_id),
    ],
    metadata: Annotated[str, Form(description="A JSON object, as text.")] = "{}",
    wait: Wait = False,
    check_duplicates: CheckDuplicates = False,
) -> IndexAccepted:
    try:
        parsed = _METADATA.validate_json(metadata)
    except ValidationError as exc:
        raise BadRequestError(
            "metadata must be a JSON object without NaN or Infinity", code="invalid_metadata"
        ) from exc
    data = await file.read(writes.settings.limits.max_bytes + 1)
    return await _index(writes, indexer, image_id, data, parsed, wait, check_duplicates)


@router.post(
    "/index/batch", status_code=http.HTTP_202_ACCEPTED, response_model=BatchIndexResponse,
    responses=_errors(413, 422, 503), summary="Index many images; a result per item",
)  # fmt: skip
async def index_batch(
    body: BatchIndexRequest,
    writes: WritesDep,
    indexer: IndexerDep,
    wait: Wait = False,
    check_duplicates: CheckDuplicates = False,
) -> BatchIndexResponse:
    """Each item is validated and produced on its own: one bad item does not fail the others."""

    async def one(item: IndexRequest) -> BatchItemResult:
        try:
            data = decode_base64(item.image_data)
            done = await _index(
                writes, indexer, item.image_id, data, item.metadata, wait, check_duplicates
            )
        except GatewayError as exc:
            return BatchItemResult(
                image_id=item.image_id, status="rejected",
                error=ErrorDetail(code=exc.code, message=exc.message),
            )  # fmt: skip
        return BatchItemResult(
            image_id=item.image_id, status=done.status, duplicate_of=done.duplicate_of
        )

    results = await asyncio.gather(*(one(item) for item in body.items))
    rejected = sum(r.status == "rejected" for r in results)
    return BatchIndexResponse(accepted=len(results) - rejected, rejected=rejected, results=results)


ThumbnailSize = Annotated[
    int | None,
    Query(ge=16, le=MAX_THUMBNAIL, description="A thumbnail: longest side at most this many "
          "pixels (16-512), cached in Redis. Unset: the original bytes."),
]  # fmt: skip
ThumbnailFormat = Annotated[
    Literal["webp", "jpeg"] | None,
    Query(description="Thumbnail format; unset: WebP when Accept allows it, else JPEG."),
]


# Declared before GET /images/{id}: that id matches slashes, so ".../content" is read here
# as the content of the id before it (an id ending in "/content" gets its record only
# through search and the CLI's direct reads).
@router.get(
    "/images/{image_id:imageid}/content", response_class=Response,
    responses={
        **_errors(404, 503, 504),
        200: {"content": {m: {} for m in ("image/jpeg", "image/png", "image/webp", "image/gif",
                                           "image/bmp")},
              "description": "The image's bytes (original, or the thumbnail asked for)."},
        304: {"description": "Unchanged since the ETag in If-None-Match."},
        410: {"model": ErrorBody, "description": "Indexed, but its record is gone from the "
              "images topic (retention, or replaced by a newer upload of the same id)."},
    },
    summary="The image itself, or a thumbnail of it, read back from the images topic",
)  # fmt: skip
async def image_content(
    image_id: ImageIdPath,
    request: Request,
    indexer: IndexerDep,
    size: ThumbnailSize = None,
    format: ThumbnailFormat = None,
) -> Response:
    """The bytes come from the record the image's vector was computed from; ``ETag`` is
    that record's place in the log, so a re-upload under the same id changes it."""
    record = await indexer.lookup(image_id)
    if not record.found:
        raise NotFoundError(f"image {image_id!r} is not indexed")
    if record.source_partition is None or record.source_offset is None:
        raise ContentGoneError(f"image {image_id!r} was indexed without its source record")
    reader: ContentReader = request.app.state.content
    where = (image_id, record.source_partition, record.source_offset)
    fmt = format or ("webp" if "image/webp" in request.headers.get("accept", "") else "jpeg")
    tag = etag(record.source_partition, record.source_offset, (size, fmt) if size else None)
    headers = {"ETag": tag, "Cache-Control": "private, no-cache", "Vary": "Accept"}
    if request.headers.get("if-none-match") == tag:
        return Response(status_code=http.HTTP_304_NOT_MODIFIED, headers=headers)
    if size is None:
        content = await reader.original(*where)
    else:
        content = await reader.thumbnail(*where, size, fmt, indexer.settings.limits)
    return Response(content.data, media_type=content.content_type, headers=headers)


@router.get(
    "/images/{image_id:imageid}", response_model=ImageInfo, responses=_errors(404, 503, 504),
    summary="Whether an image is indexed, with its metadata",
)  # fmt: skip
async def get_image(
    image_id: ImageIdPath,
    indexer: IndexerDep,
    include_vector: Annotated[bool, Query(description="With its embedding.")] = False,
) -> ImageInfo:
    record = await indexer.lookup(image_id, include_vector=include_vector)
    if not record.found:
        raise NotFoundError(f"image {image_id!r} is not indexed")
    return ImageInfo(
        image_id=image_id, indexed=True, model_id=record.model_id,
        metadata=record.metadata or {}, indexed_at=record.indexed_at,
        content_sha256=record.content_sha256, vector=_floats(record.vector),
    )  # fmt: skip


@router.delete(
    "/images/{image_id:imageid}", status_code=http.HTTP_202_ACCEPTED, response_model=DeleteAccepted,
    responses=_errors(503, 504), summary="Delete an image (a tombstone through the pipeline)",
)  # fmt: skip
async def delete_image(
    image_id: ImageIdPath, writes: WritesDep, wait: Wait = False
) -> DeleteAccepted:
    written = await writes.delete_image(image_id)
    if wait:
        await writes.wait_visible(written, deleted=True)
    return DeleteAccepted(image_id=image_id, status="deleted" if wait else "accepted")


async def _search(searches: Searches, query: SearchQuery, options: SearchParams) -> SearchResponse:
    started = time.perf_counter()
    hits, cached = await searches.search(query, options)
    took_ms = _ms_since(started)
    return SearchResponse(
        results=[_result(h) for h in hits], took_ms=took_ms, cached=cached,
        query_id=str(uuid.uuid4()), total_found=len(hits), search_time_ms=took_ms,
    )  # fmt: skip


def _result(hit: SearchHit) -> SearchResult:
    return SearchResult(
        image_id=hit.image_id, score=hit.score, metadata=hit.metadata, vector=_floats(hit.vector)
    )


def _floats(packed: str | None) -> list[float] | None:
    return None if packed is None else [round(float(x), 7) for x in unpack_vector(packed)]


def _options(body: SearchOptions) -> SearchParams:
    """The search parameters of a request body, as the domain takes them."""
    return SearchParams.model_validate(body.model_dump(include=set(SearchParams.model_fields)))


@router.post(
    "/search", response_model=SearchResponse, responses=_errors(400, 413, 422, 503, 504),
    summary="Search by image",
)  # fmt: skip
async def search(body: SearchRequest, searches: SearchesDep) -> SearchResponse:
    """The indexed images most similar to the query image, best first."""
    query = SearchQuery(image=decode_base64(body.image_data), crop=body.crop)
    return await _search(searches, query, _options(body))


def _example(example: QueryExample) -> Example:
    # The base64 is checked here, so a bad one is a 400 with the gateway's own message.
    image = None if example.image_data is None else decode_base64(example.image_data)
    return Example(
        image=None if image is None else base64.b64encode(image).decode("ascii"),
        image_id=example.image_id, text=example.text, weight=example.weight, crop=example.crop,
    )  # fmt: skip


@router.post(
    "/search/multi", response_model=SearchResponse, responses=_errors(400, 404, 413, 422, 503, 504),
    summary="Search by several examples: images, ids and texts, positive and negative, weighted",
)  # fmt: skip
async def search_multi(body: MultiSearchRequest, searches: SearchesDep) -> SearchResponse:
    """As Qdrant's recommend API ("average_vector"): with the weighted means P of the
    positive and N of the negative examples' embeddings, the query is P + (P − N),
    normalised. Images named by id are left out of the results."""
    query = SearchQuery(
        positive=tuple(_example(e) for e in body.positive),
        negative=tuple(_example(e) for e in body.negative),
    )
    return await _search(searches, query, _options(body))


@router.post(
    "/duplicates", response_model=DuplicatesResponse, responses=_errors(400, 422, 503, 504),
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
         "took_ms": _ms_since(started)}
    )  # fmt: skip


@router.post(
    "/search/text", response_model=SearchResponse, responses=_errors(400, 422, 503, 504),
    summary="Search by text (CLIP's text tower)",
)  # fmt: skip
async def search_text(body: TextSearchRequest, searches: SearchesDep) -> SearchResponse:
    return await _search(searches, SearchQuery(text=body.query), _options(body))


@router.post(
    "/search/similar", response_model=SearchResponse, responses=_errors(404, 422, 503, 504),
    summary="More like this: search by an indexed image's id",
)  # fmt: skip
async def search_similar(body: SimilarSearchRequest, searches: SearchesDep) -> SearchResponse:
    return await _search(searches, SearchQuery(like_image_id=body.image_id), _options(body))


@router.get("/stats", response_model=Stats, responses=_errors(503, 504), summary="Statistics")
async def stats(request: Request, indexer: IndexerDep, searches: SearchesDep) -> Stats:
    status = await indexer.status()
    kafka: KafkaStats = request.app.state.kafka_stats
    try:
        async with asyncio.timeout(indexer.settings.kafka.send_timeout_s):
            lag, dead_letters, (rate_in, rate_out) = await asyncio.gather(
                kafka.lag(), kafka.dead_letters(), kafka.rates()
            )
    except (TimeoutError, KafkaError) as exc:
        raise UpstreamError("Kafka does not answer; retry later") from exc
    return Stats(
        indexed_images=status.indexed,
        collection=status.collection,
        store=status.store,
        model_id=status.model_id,
        consumer_lag={t: TopicLag(group=g, lag=n) for t, (g, n) in lag.items()},
        images_in_per_s=round(rate_in, 2),
        images_out_per_s=round(rate_out, 2),
        dead_letters=dead_letters,
        searches_in_flight=indexer.in_flight,
        uptime_s=round(time.monotonic() - request.app.state.started, 1),
        cache={
            name: {"hits": c.hits, "misses": c.misses} for name, c in searches.cache.counts.items()
        },
    )


@router.post(
    "/admin/reindex", status_code=http.HTTP_202_ACCEPTED, response_model=ReindexStatus,
    responses=_errors(503, 504), tags=["admin"],
    summary="Rebuild the index into a new collection and switch to it when caught up",
)  # fmt: skip
async def start_reindex(indexer: IndexerDep, body: ReindexRequest | None = None) -> ReindexStatus:
    """Searches keep being served from the current collection until the switch.

    With ``model_id`` the new collection holds that model's vectors, which an embedder
    running that model produces (see the README's *Reindex and replay*).
    """
    return await indexer.reindex("start", body.model_id if body else None)


@router.get(
    "/admin/reindex", response_model=ReindexStatus, responses=_errors(503, 504), tags=["admin"],
    summary="Progress of the reindex: processed, total, rate, ETA",
)  # fmt: skip
async def reindex_status(indexer: IndexerDep) -> ReindexStatus:
    return await indexer.reindex("status")


@router.post(
    "/admin/reindex/drop-old", response_model=ReindexStatus, responses=_errors(503, 504),
    tags=["admin"], summary="Drop the collections the alias no longer points at",
)  # fmt: skip
async def drop_old_collections(indexer: IndexerDep) -> ReindexStatus:
    return await indexer.reindex("drop_old")


@open_router.get("/health", response_model=Health, summary="Liveness")
async def health() -> Health:
    return Health(timestamp=datetime.now(UTC), version=__version__, services={"gateway": "healthy"})


@open_router.get(
    "/ready", response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Kafka is down: nothing can be accepted."}},
    summary="Readiness: Kafka; Redis or the vector store down is 'degraded'",
)  # fmt: skip
async def ready(
    request: Request, writes: WritesDep, indexer: IndexerDep, response: Response
) -> Readiness:
    """Writes need Kafka only, so a gateway is ready while Kafka is up: an indexer that is
    down or being redeployed (one replica with the embedded store) makes searches fail
    with 504 until it is back, but must not take every gateway out of service for writes.
    """
    cache: Redis = request.app.state.redis

    async def redis_ok() -> bool:
        try:
            return bool(await cache.ping())
        except (RedisError, OSError):
            return False

    async def store_ok() -> bool:
        try:
            return (await indexer.status()).ready
        except GatewayError:
            return False

    kafka, redis_up, store = await asyncio.gather(writes.kafka_ok(), redis_ok(), store_ok())
    checks = {
        "kafka": "up" if kafka else "down",
        "redis": "up" if redis_up else "down",
        "vector_store": "up" if store else "down",
    }
    if not kafka:
        response.status_code = http.HTTP_503_SERVICE_UNAVAILABLE
        return Readiness(status="not_ready", checks=checks)
    return Readiness(status="ready" if redis_up and store else "degraded", checks=checks)
