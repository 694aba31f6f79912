"""The responders' one decoder: both deadlines, and a bad body as a bad_request."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from imgsim_core.contracts import LookupRequested
from imgsim_core.errors import ErrorCode
from imgsim_core.kafka import now_ms
from imgsim_core.responders import BadRequestError, decode_request
from imgsim_core.topics import Header


def body(deadline_ms: int, image_id: str = "a") -> bytes:
    return LookupRequested(image_id=image_id, deadline_ms=deadline_ms).model_dump_json().encode()


def test_a_request_in_time_is_decoded() -> None:
    headers = {Header.DEADLINE: str(now_ms() + 5_000)}
    request = decode_request(headers, body(now_ms() + 5_000), LookupRequested)
    assert request is not None
    assert request.image_id == "a"


def test_a_past_header_deadline_drops_the_request_before_its_body_is_read() -> None:
    headers = {Header.DEADLINE: str(now_ms() - 1)}
    assert decode_request(headers, b"not even json", LookupRequested) is None


def test_a_past_body_deadline_drops_the_request() -> None:
    assert decode_request({}, body(now_ms() - 1), LookupRequested) is None


def test_a_bad_body_is_a_bad_request_that_does_not_echo_the_input() -> None:
    secret = "x" * 40
    with pytest.raises(BadRequestError) as caught:
        decode_request(
            {}, b'{"image_id": 7, "deadline_ms": "' + secret.encode() + b'"}', LookupRequested
        )
    assert caught.value.code is ErrorCode.BAD_REQUEST
    assert caught.value.reason.startswith("invalid request (2 errors): ")
    assert "deadline_ms" in caught.value.reason
    assert secret not in caught.value.reason


def test_a_model_without_a_deadline_is_a_programming_error() -> None:
    class NoDeadline(BaseModel):
        name: str

    with pytest.raises(TypeError, match="no deadline_ms"):
        decode_request({}, b'{"name": "a"}', NoDeadline)
