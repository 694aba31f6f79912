"""The error codes a service puts in a reply's ``error_code`` (and an image's refusal).

One list for the whole system: the embedder and the indexer send these, the gateway
maps each to an HTTP status (:data:`CLIENT_FAULTS` are the asker's fault: 4xx; the rest
are the system's: 503), and an image refused by :mod:`imgsim_core.images` carries one as
its code, which is also its dead-letter reason.

A code that a newer service sends and this version does not know reads as
:attr:`ErrorCode.UNKNOWN` (a rolling deploy never fails to parse a reply); adding a code
means deploying the gateways first.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # The request or its image is at fault.
    BAD_REQUEST = "bad_request"  # the request breaks the contract
    BAD_BASE64 = "bad_base64"  # the query image is not base64
    EMPTY_IMAGE = "empty_image"
    IMAGE_TOO_LARGE = "image_too_large"  # over ImageLimits.max_bytes
    UNSUPPORTED_FORMAT = "unsupported_format"
    CORRUPT_IMAGE = "corrupt_image"  # the header or the pixels cannot be decoded
    TOO_MANY_PIXELS = "too_many_pixels"  # over ImageLimits.max_pixels (a pixel bomb)
    BAD_CROP = "bad_crop"  # the crop box does not lie inside the image
    NOT_FOUND = "not_found"  # a search by id or example of an image that is not indexed
    # The system is at fault.
    BAD_VECTOR = "bad_vector"  # a query vector that is not base64 of float32
    WRONG_DIM = "wrong_dim"  # a query vector of another dimension than the index
    WRONG_MODEL = "wrong_model"  # a query vector of a model no collection holds
    EMBEDDING_FAILED = "embedding_failed"  # the model failed on the query
    STORE_ERROR = "store_error"  # the vector store failed
    UNKNOWN = "unknown"  # a code this version does not know

    @classmethod
    def _missing_(cls, value: object) -> ErrorCode:
        return cls.UNKNOWN


CLIENT_FAULTS = frozenset(
    {
        ErrorCode.BAD_REQUEST,
        ErrorCode.BAD_BASE64,
        ErrorCode.EMPTY_IMAGE,
        ErrorCode.IMAGE_TOO_LARGE,
        ErrorCode.UNSUPPORTED_FORMAT,
        ErrorCode.CORRUPT_IMAGE,
        ErrorCode.TOO_MANY_PIXELS,
        ErrorCode.BAD_CROP,
        ErrorCode.NOT_FOUND,
    }
)
# Of those, the ones about the query image itself (the gateway's invalid_image, 422).
IMAGE_FAULTS = CLIENT_FAULTS - {ErrorCode.BAD_REQUEST, ErrorCode.BAD_BASE64, ErrorCode.NOT_FOUND}
