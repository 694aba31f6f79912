"""Event payloads exchanged between the services (contract version 1).

The images topic carries raw image bytes (see :mod:`imgsim_core.topics`); every other
topic carries one of these models as JSON. Vectors travel as base64 of packed
little-endian float32, which is 4 bytes a dimension before base64 instead of ~10 as JSON
numbers.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from datetime import datetime
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
import pybase64
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, model_validator
from pydantic_core import PydanticCustomError

from imgsim_core.errors import ErrorCode
from imgsim_core.ids import MAX_IMAGE_ID_LENGTH

# Point ids are derived from image ids, so a redelivered event overwrites, never duplicates.
POINT_NAMESPACE = uuid.UUID("6f1d6c2e-1b8e-5c55-9a51-2f3b2f6a9e10")

Metadata = dict[str, JsonValue]


MAX_METADATA_DEPTH = 32


def finite_metadata(metadata: Metadata) -> Metadata:
    """Refuse NaN and ±Infinity anywhere in metadata, and nesting over 32 levels.

    Python's and pydantic's JSON parsers both read ``NaN``, ``Infinity`` and ``1e999``;
    stored, they would come back as null. The error type is ``invalid_metadata``.
    """
    stack: list[tuple[JsonValue, int]] = [(metadata, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise PydanticCustomError(
                "invalid_metadata", "metadata has NaN or Infinity, which JSON cannot carry"
            )
        if isinstance(value, dict | list) and depth > MAX_METADATA_DEPTH:
            raise PydanticCustomError(
                "invalid_metadata", f"metadata is nested over {MAX_METADATA_DEPTH} levels"
            )
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
    return metadata


FiniteMetadata = Annotated[Metadata, AfterValidator(finite_metadata)]
Vector = npt.NDArray[np.float32]
MAX_QUERY_TEXT = 1000


def query_text(text: str) -> str:
    """A text query needs a character that is not white space (``str.strip``'s sense)."""
    if not text.strip():
        raise PydanticCustomError("empty_text", "the text is empty or only white space")
    return text


QueryText = Annotated[
    str,
    Field(min_length=1, max_length=MAX_QUERY_TEXT, examples=["a red bicycle"]),
    AfterValidator(query_text),
]

TopK = Annotated[int, Field(ge=1, le=100, description="How many results, 1–100.")]
Threshold = Annotated[
    float, Field(ge=-1.0, le=1.0, description="Minimum cosine similarity of a result.")
]


SHA256_PATTERN = r"^[0-9a-f]{64}$"
POINT_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


_POINT_PREFIX = POINT_NAMESPACE.bytes


def point_id(image_id: str) -> str:
    """The vector store's point id of an image: UUIDv5 of the image id.

    The same string as ``str(uuid.uuid5(POINT_NAMESPACE, image_id))`` (RFC 4122 §4.3),
    spelled out because the indexer computes one per point it writes and this costs a
    third of it (1.2 µs against 3.6).
    """
    digest = bytearray(hashlib.sha1(_POINT_PREFIX + image_id.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def encode_base64(data: bytes) -> str:
    """Standard base64 (RFC 4648, padded), as every contract carries bytes in JSON."""
    return pybase64.b64encode_as_string(data)


def decode_base64(text: str) -> bytes:
    """The bytes of strict standard base64; anything else (another character, bad
    padding) raises ValueError (a ``binascii.Error``).

    pybase64 (SIMD) decodes a 124 KiB image's base64 in 7 µs, where the standard
    library took 600 µs: on the gateway's accept path that was 29 % of its CPU."""
    return pybase64.b64decode(text, validate=True)


def pack_vector(vector: Vector) -> str:
    """float32 vector → base64 of its little-endian bytes."""
    return encode_base64(np.asarray(vector, dtype="<f4").tobytes())


def unpack_vector(packed: str) -> Vector:
    """Inverse of :func:`pack_vector`; anything but strict base64 raises ValueError."""
    return np.frombuffer(decode_base64(packed), dtype="<f4").astype(np.float32)


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ImageEmbedded(_Event):
    """Value of a record on the vectors topic (key = image id; null value = deleted)."""

    image_id: str = Field(max_length=MAX_IMAGE_ID_LENGTH)
    model_id: str
    dim: int = Field(gt=0)
    vector: str = Field(description="base64 of packed little-endian float32, L2-normalised")
    metadata: Metadata = Field(default_factory=dict)
    source_partition: int | None = Field(
        default=None, description="Partition of the image record this vector was computed from."
    )
    source_offset: int | None = Field(
        default=None, description="Offset of the image record this vector was computed from."
    )
    embedded_at: datetime
    content_sha256: str | None = Field(
        default=None, pattern=SHA256_PATTERN,
        description="SHA-256 (hex) of the image bytes: exact duplicates share it.",
    )  # fmt: skip

    def array(self) -> Vector:
        return unpack_vector(self.vector)


Scalar = str | int | float | bool


class Range(_Event):
    """A numeric range on a metadata field; at least one bound."""

    gte: float | None = None
    lte: float | None = None
    gt: float | None = None
    lt: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> Range:
        if self.gte is None and self.lte is None and self.gt is None and self.lt is None:
            raise ValueError("a range needs at least one of gte, lte, gt, lt")
        return self


# A condition on one metadata key: a value (exact match; on a list field, any item
# matches), a list of values (any of them), or a numeric range.
Condition = Scalar | list[Scalar] | Range
MAX_FILTER_KEYS = 16
FILTER_KEY_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_\-]{0,63}$"


def validate_filter(value: dict[str, Condition] | None) -> dict[str, Condition] | None:
    if value is None:
        return None
    if len(value) > MAX_FILTER_KEYS:
        raise ValueError(f"a filter has at most {MAX_FILTER_KEYS} keys")
    for key in value:
        if not re.match(FILTER_KEY_PATTERN, key):
            raise ValueError(f"filter key {key!r}: letters, digits, _ and -, 1-64 characters")
    return value


Filter = Annotated[dict[str, Condition] | None, AfterValidator(validate_filter)]


class SearchParams(_Event):
    """What every search asks for, whatever its query."""

    top_k: TopK = 10
    threshold: Threshold | None = Field(default=None, examples=[0.7])
    include_metadata: bool = True
    include_vectors: bool = Field(
        default=False, description="Each result with its embedding (L2-normalised floats)."
    )
    filter: Filter = Field(
        default=None,
        description="Metadata conditions that must all hold. A value matches exactly (on a "
        "list field, any item); a list matches any of its values; {gte, lte, gt, lt} is a "
        "numeric range.",
        examples=[{"tags": "nature", "source": ["user_upload", "crawler"], "year": {"gte": 2020}}],
    )


class Crop(_Event):
    """A region of an image, in the original image's pixels (``x``, ``y``: top left)."""

    x: int = Field(ge=0, examples=[40])
    y: int = Field(ge=0, examples=[20])
    w: int = Field(ge=1, examples=[200])
    h: int = Field(ge=1, examples=[150])

    def box(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.w, self.h)


MAX_EXAMPLES = 16
Weight = Annotated[float, Field(gt=0, le=100, description="How much this example counts.")]


class Example(_Event):
    """One example of a multi-example search: exactly one of ``image`` (base64),
    ``text``, ``image_id`` (an indexed image) or ``vector`` (what the embedder turns an
    image or a text into before the indexer sees it)."""

    image: str | None = Field(default=None, description="base64 image bytes")
    text: QueryText | None = None
    image_id: str | None = Field(default=None, max_length=MAX_IMAGE_ID_LENGTH)
    vector: str | None = Field(default=None, description="base64 of packed little-endian float32")
    weight: Weight = 1.0
    crop: Crop | None = Field(default=None, description="Only with image: search this region.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Example:
        given = [v for v in (self.image, self.text, self.image_id, self.vector) if v is not None]
        if len(given) != 1:
            raise ValueError("an example has exactly one of image, text, image_id, vector")
        if self.crop is not None and self.image is None:
            raise ValueError("a crop goes with an image example only")
        return self


Examples = Annotated[list[Example], Field(max_length=MAX_EXAMPLES)]


class SearchRequested(SearchParams):
    """A search that needs an embedding (queries topic): exactly one of image or text,
    or examples (``positive``, at least one, and ``negative``) of which some are images
    or texts."""

    image: str | None = Field(default=None, description="base64 image bytes")
    text: QueryText | None = None
    crop: Crop | None = Field(default=None, description="Only with image: search this region.")
    positive: Examples = Field(default_factory=list)
    negative: Examples = Field(default_factory=list)
    deadline_ms: int = Field(description="Epoch ms; the search is dropped after it.")


class VectorSearchRequested(SearchParams):
    """A search with its query vector, by an indexed image's id, or by examples that are
    vectors and ids (searches topic).

    Exactly one of ``vector``, ``like_image_id`` and ``positive`` (``negative`` goes with
    ``positive``); a search by id ("more like this") leaves the image itself out of its
    hits, a search by examples leaves out the images it names. Examples combine as
    Qdrant's recommend API does ("average_vector"): with weighted means P of the positive
    and N of the negative vectors, the query is P + (P − N), normalised (P alone without
    negatives).
    """

    vector: str | None = Field(default=None, description="base64 of packed little-endian float32")
    like_image_id: str | None = Field(default=None, max_length=MAX_IMAGE_ID_LENGTH)
    positive: Examples = Field(default_factory=list)
    negative: Examples = Field(default_factory=list)
    model_id: str | None = None
    deadline_ms: int


class SearchHit(_Event):
    image_id: str
    score: float
    metadata: Metadata | None = None
    vector: str | None = Field(default=None, description="With include_vectors: base64 float32.")


class SearchReplied(_Event):
    """The answer to a search, sent to the asking gateway's reply topic."""

    hits: list[SearchHit] = Field(default_factory=list)
    query_vector: str | None = Field(
        default=None, description="The query's vector, echoed so the gateway can cache it."
    )
    model_id: str | None = None
    error: str | None = None
    error_code: ErrorCode | None = None


class StatusRequested(_Event):
    """Asks the indexer how it stands (status topic)."""

    deadline_ms: int


class IndexerStatus(_Event):
    """The indexer's answer to :class:`StatusRequested`."""

    ready: bool
    store: str = Field(description="qdrant-edge or qdrant-server")
    collection: str
    indexed: int = Field(description="Points in the collection.")
    model_id: str | None = Field(default=None, description="The model its vectors must come from.")
    started_at: datetime | None = None
    error: str | None = None


class LookupRequested(_Event):
    """Asks the indexer for one image's record (lookups topic)."""

    image_id: str = Field(max_length=MAX_IMAGE_ID_LENGTH)
    include_vector: bool = False
    deadline_ms: int


class ImageRecord(_Event):
    """The indexer's answer to :class:`LookupRequested`."""

    image_id: str
    found: bool
    model_id: str | None = None
    metadata: Metadata | None = None
    indexed_at: datetime | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    content_sha256: str | None = None
    vector: str | None = Field(default=None, description="With include_vector: base64 float32.")
    error: str | None = None


class DuplicatesRequested(_Event):
    """Asks the indexer for groups of duplicates (duplicates topic).

    With ``content_sha256``: the one group of images with those exact bytes. Otherwise the
    collection (or the part ``filter`` selects) is scanned in point-id order from
    ``cursor``: each image is grouped with the other images whose bytes are the same and,
    with a ``threshold``, those at least that similar, at most ``max_group`` of them. A
    group is reported at its first image in scan order (its members come later), and not
    when an earlier member's group already holds all of it, so every pair is reported
    and no group repeats inside a bigger one.
    """

    content_sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    threshold: Threshold | None = Field(default=None, description="None: exact copies only.")
    filter: Filter = None
    limit: int = Field(default=20, ge=1, le=50, description="Groups on one page.")
    cursor: str | None = Field(default=None, pattern=POINT_ID_PATTERN)
    max_group: int = Field(default=20, ge=1, le=50, description="Members of a group at most.")
    deadline_ms: int


class DuplicateMember(_Event):
    image_id: str
    score: float = Field(description="Cosine similarity to the group's first image.")
    exact: bool = Field(description="The same bytes as the group's first image.")


class DuplicateGroup(_Event):
    image_id: str = Field(description="The group's first image in scan order.")
    members: list[DuplicateMember]
    truncated: bool = Field(default=False, description="More members than max_group.")


class DuplicatesReplied(_Event):
    groups: list[DuplicateGroup] = Field(default_factory=list)
    next_cursor: str | None = Field(default=None, description="None: the scan is complete.")
    scanned: int = Field(default=0, description="Images this page looked at.")
    error: str | None = None
    error_code: ErrorCode | None = None


ReindexState = Literal["idle", "running", "switching", "done", "failed"]


class ReindexRequested(_Event):
    """Asks the indexer to start a reindex, report on it, or drop old collections (admin topic).

    ``action``: ``start`` builds a new collection from the compacted topics and switches
    the alias to it once it has caught up; ``status`` only reports; ``drop_old`` removes
    the collections that no alias points at any more.
    """

    action: Literal["start", "status", "drop_old"] = "status"
    model_id: str | None = Field(
        default=None,
        description="start: the model of the new collection; unset = the current one. "
        "Another model's vectors come from an embedder running that model.",
    )
    deadline_ms: int


class ReindexStatus(_Event):
    """The indexer's answer to :class:`ReindexRequested`."""

    state: ReindexState
    collection: str = Field(description="The collection the alias points at now.")
    target: str | None = Field(default=None, description="The collection being built.")
    source_topic: str | None = None
    model_id: str | None = Field(default=None, description="Model of the collection built.")
    processed: int = 0
    total: int = Field(default=0, description="Records to replay (end offsets at the start).")
    rate_per_s: float = 0.0
    eta_s: float | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    old_collections: list[str] = Field(default_factory=list)
    dropped: list[str] = Field(default_factory=list)
    error: str | None = None
