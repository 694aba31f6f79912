"""The image lifecycle under ``/api/v1``: index (JSON, multipart, batch), read back, look
up, delete."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi import status as http
from pydantic import AfterValidator, JsonValue, TypeAdapter, ValidationError

from imgsim_core.contracts import (
    FiniteMetadata,
)
from imgsim_core.ids import IMAGE_ID_RULE, MAX_IMAGE_ID_LENGTH, check_image_id
from imgsim_gateway.api import (
    API_PREFIX,
    PROTECTED,
    CheckDuplicates,
    ImageIdPath,
    IndexerDep,
    JSONRoute,
    Wait,
    WritesDep,
    failures,
    floats,
    ms_since,
)
from imgsim_gateway.checks import decode_base64
from imgsim_gateway.content import MAX_THUMBNAIL, ContentGoneError, ContentReader, etag
from imgsim_gateway.errors import BadRequestError, GatewayError, NotFoundError
from imgsim_gateway.indexer import IndexerClient
from imgsim_gateway.schemas import (
    BatchIndexRequest,
    BatchIndexResponse,
    BatchItemResult,
    DeleteAccepted,
    ErrorBody,
    ErrorDetail,
    ImageInfo,
    IndexAccepted,
    IndexRequest,
)
from imgsim_gateway.writes import Writes

log = logging.getLogger(__name__)
_METADATA: TypeAdapter[dict[str, JsonValue]] = TypeAdapter(FiniteMetadata)
router = APIRouter(prefix=API_PREFIX, dependencies=PROTECTED, route_class=JSONRoute)


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
        processing_time_ms=ms_since(started), duplicate_of=duplicate_of,
    )  # fmt: skip


@router.post(
    "/index", status_code=http.HTTP_202_ACCEPTED, response_model=IndexAccepted,
    responses=failures(400, 413, 422, 503, 504), summary="Index an image (base64 JSON)",
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
    responses=failures(400, 413, 422, 503, 504), summary="Index an image (multipart upload)",
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
    responses=failures(413, 422, 503), summary="Index many images; a result per item",
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
        **failures(404, 503, 504),
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
    "/images/{image_id:imageid}", response_model=ImageInfo, responses=failures(404, 503, 504),
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
        content_sha256=record.content_sha256, vector=floats(record.vector),
    )  # fmt: skip


@router.delete(
    "/images/{image_id:imageid}", status_code=http.HTTP_202_ACCEPTED, response_model=DeleteAccepted,
    responses=failures(503, 504), summary="Delete an image (a tombstone through the pipeline)",
)  # fmt: skip
async def delete_image(
    image_id: ImageIdPath, writes: WritesDep, wait: Wait = False
) -> DeleteAccepted:
    written = await writes.delete_image(image_id)
    if wait:
        await writes.wait_visible(written, deleted=True)
    return DeleteAccepted(image_id=image_id, status="deleted" if wait else "accepted")
