"""Reply error codes: one list, read leniently, and every image refusal carries one."""

from __future__ import annotations

import pytest

from imgsim_core.contracts import SearchReplied
from imgsim_core.errors import CLIENT_FAULTS, IMAGE_FAULTS, ErrorCode
from imgsim_core.images import ImageError, inspect_image
from imgsim_core.settings import ImageLimits


def test_a_reply_round_trips_its_code() -> None:
    reply = SearchReplied(error="no", error_code=ErrorCode.STORE_ERROR)
    assert reply.model_dump_json().count('"store_error"') == 1
    assert SearchReplied.model_validate_json(reply.model_dump_json()) == reply


def test_a_code_this_version_does_not_know_reads_as_unknown() -> None:
    reply = SearchReplied.model_validate_json('{"error": "x", "error_code": "from_the_future"}')
    assert reply.error_code is ErrorCode.UNKNOWN


def test_image_faults_are_client_faults() -> None:
    assert IMAGE_FAULTS < CLIENT_FAULTS
    assert ErrorCode.STORE_ERROR not in CLIENT_FAULTS


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", ErrorCode.EMPTY_IMAGE),
        (b"x" * 2000, ErrorCode.IMAGE_TOO_LARGE),  # over the 1,024-byte limit below,
        (b"not an image", ErrorCode.UNSUPPORTED_FORMAT),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, ErrorCode.CORRUPT_IMAGE),
    ],
)
def test_image_refusals_carry_a_listed_code(data: bytes, code: ErrorCode) -> None:
    with pytest.raises(ImageError) as refused:
        inspect_image(data, ImageLimits(max_bytes=1024))
    assert refused.value.code is code
    assert code in IMAGE_FAULTS
