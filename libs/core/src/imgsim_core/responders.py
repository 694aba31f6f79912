"""What every request/reply responder does before its work: one deadline check, one
decoder.

A request carries its deadline twice: in the ``deadline`` header, read before the body
is parsed (a stale request nobody waits for costs next to nothing), and as the body's
``deadline_ms``, the contract's own field. :func:`decode_request` checks both and parses
the body into the request's model:

- past either deadline → ``None``: the responder drops the request without a reply
  (the asker has given up; an indexer responder raises FastStream's ``AckMessage``, the
  one way to end a handler without it publishing the return value);
- a body that is not the model → :class:`BadRequestError`, whose ``reason`` says where
  and why without echoing the input (a query's input may be a whole image): the
  responder answers it with ``error_code = bad_request``;
- otherwise the request.

A responder's handler takes the message as :class:`Received`, from the :func:`received`
decoder, as its one argument, not as FastStream's ``Context``-injected ``KafkaMessage``
(or ``broker``): fast_depends resolves every ``Context`` parameter on a worker thread, a
thread hop for each parameter of each message. Measured with trivial responders (a
search's two hops and its reply): c=1 p50 5-7 → 3.6-4.8 ms, c=32 397-488 → 573-663
round trips/s (bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from faststream.message import StreamMessage
from pydantic import BaseModel, ValidationError

from imgsim_core.errors import ErrorCode
from imgsim_core.kafka import now_ms, past_deadline

R = TypeVar("R", bound=BaseModel)  # a request contract: it has a deadline_ms


class BadRequestError(Exception):
    """A request body that is not its contract's model."""

    code = ErrorCode.BAD_REQUEST

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Received:
    """A request message as its responder's handler takes it."""

    body: bytes
    headers: Mapping[str, str]
    correlation_id: str
    reply_to: str  # "" when nobody waits for an answer


async def received(message: StreamMessage[Any]) -> Received:
    """FastStream decoder of a responder's subscriber: the message as :class:`Received`."""
    return Received(message.body, message.headers, message.correlation_id, message.reply_to)


def decode_request(headers: Mapping[str, str], body: bytes, model: type[R]) -> R | None:
    """The request in a message, or None when it is past its deadline; raises
    :class:`BadRequestError` for a body that is not ``model``."""
    if past_deadline(headers):
        return None
    try:
        request = model.model_validate_json(body)
    except ValidationError as exc:
        raise BadRequestError(describe_invalid(exc)) from exc
    deadline = getattr(request, "deadline_ms", None)
    if not isinstance(deadline, int):
        raise TypeError(f"{model.__name__} is not a request contract: it has no deadline_ms")
    return None if deadline < now_ms() else request


def describe_invalid(exc: ValidationError, *, most: int = 5) -> str:
    """A short, input-free account of why a body failed validation."""
    problems = [
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    more = f" (+{len(problems) - most} more)" if len(problems) > most else ""
    return f"invalid request ({exc.error_count()} errors): " + "; ".join(problems[:most]) + more
