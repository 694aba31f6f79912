"""The image-id rule, one for every entry point: the gateway, the CLI, the embedder, the indexer.

An image id is 1–256 printable characters (``str.isprintable``: no control, format,
separator-other-than-space or unassigned characters, so no U+00A0, U+200B, U+202E or
U+0085), and it stays addressable as a URL path (``/api/v1/images/{image_id}``): no
``/``-separated segment may be empty, ``.`` or ``..``, because ordinary HTTP clients
normalise those away before the request is sent. One leading ``/`` is allowed, so an
absolute file path (``imgsim index --id-from absolute``) is an id.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

MAX_IMAGE_ID_LENGTH = 256
IMAGE_ID_RULE = (
    "1-256 printable characters (no control, format or non-space separator characters); "
    "no empty, '.' or '..' segment between '/' (one leading '/' is allowed)"
)


class ImageIdError(ValueError):
    """An id that breaks the rule; the message says how."""


def check_image_id(image_id: str) -> str:
    """The id itself when it follows the rule; :class:`ImageIdError` otherwise."""
    if not 1 <= len(image_id) <= MAX_IMAGE_ID_LENGTH:
        raise ImageIdError(f"the id is {len(image_id)} characters; it must be 1-256")
    bad = next((c for c in image_id if not c.isprintable()), None)
    if bad is not None:
        raise ImageIdError(f"the id has the character U+{ord(bad):04X}, which is not printable")
    if any(segment in ("", ".", "..") for segment in image_id.removeprefix("/").split("/")):
        raise ImageIdError("the id has an empty, '.' or '..' segment between '/'")
    return image_id


# An image id field of a request model: the rule as a pydantic type.
ImageId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_IMAGE_ID_LENGTH,
        description=f"Your id for the image: {IMAGE_ID_RULE}.",
        examples=["products/sku-1234.jpg"],
    ),
    AfterValidator(check_image_id),
]
