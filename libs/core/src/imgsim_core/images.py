"""Image intake: sniff the format from the bytes, bound the size, decode safely.

The gateway calls :func:`inspect_image` on every upload (header only, no full decode),
the embedder calls :func:`decode_rgb` before preprocessing. Both raise :class:`ImageError`
with a machine-readable ``code`` and a message for the client or the dead-letter record.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from imgsim_core.errors import ErrorCode
from imgsim_core.settings import ImageLimits

# Magic numbers of the allowed formats; the client's content type is never trusted.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
)
# The content type of each image format imgsim accepts (PIL's format names).
CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
}
ALLOWED_FORMATS = frozenset(CONTENT_TYPES)


class ImageError(ValueError):
    """An image that imgsim will not accept; ``code`` names the reason."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ImageInfo:
    format: str
    width: int
    height: int


def sniff_format(data: bytes) -> str | None:
    """The format named by the leading bytes, or None when it is not an allowed one."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, offset, name in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return name
    return None


def inspect_image(data: bytes, limits: ImageLimits) -> ImageInfo:
    """Check size, format and dimensions from the header, without a full decode."""
    if not data:
        raise ImageError(ErrorCode.EMPTY_IMAGE, "the image is empty")
    if len(data) > limits.max_bytes:
        raise ImageError(
            ErrorCode.IMAGE_TOO_LARGE,
            f"the image is {len(data)} bytes; the limit is {limits.max_bytes}",
        )
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError(
            ErrorCode.UNSUPPORTED_FORMAT,
            "the bytes are not an image of an allowed format (JPEG, PNG, WebP, GIF, BMP)",
        )
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as img:
            width, height = img.size
    except Image.DecompressionBombError as exc:  # PIL's own guard, at twice its pixel limit
        raise ImageError(ErrorCode.TOO_MANY_PIXELS, f"decompression bomb: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(
            ErrorCode.CORRUPT_IMAGE, f"the {fmt} header cannot be read: {exc}"
        ) from exc
    if width <= 0 or height <= 0:
        raise ImageError(ErrorCode.CORRUPT_IMAGE, "the image has no pixels")
    if width * height > limits.max_pixels:
        raise ImageError(
            ErrorCode.TOO_MANY_PIXELS,
            f"the image is {width}×{height} pixels; the limit is {limits.max_pixels} pixels",
        )
    return ImageInfo(fmt, width, height)


def decoded_pixels(info: ImageInfo, target: int = 224) -> int:
    """About how many pixels :func:`decode_rgb` holds for this image: a big JPEG's draft
    decode is 1/2, 1/4 or 1/8 of each side, anything else decodes whole. Each costs ~4
    bytes (Pillow's RGB), up to twice that while another mode converts to RGB."""
    pixels = info.width * info.height
    if info.format != "JPEG":
        return pixels
    scale = min(8, min(info.width, info.height) // target)
    reduction = 1 << (scale.bit_length() - 1) if scale >= 1 else 1
    return max(1, pixels // (reduction * reduction))


Box = tuple[int, int, int, int]  # x, y, width, height in the image's pixels


def check_crop(info: ImageInfo, crop: Box) -> None:
    """Refuse a crop box that does not lie inside the image (code ``bad_crop``)."""
    x, y, w, h = crop
    if x < 0 or y < 0 or w < 1 or h < 1 or x + w > info.width or y + h > info.height:
        raise ImageError(
            ErrorCode.BAD_CROP,
            f"the crop x={x}, y={y}, w={w}, h={h} is not inside the {info.width}×{info.height} "
            "image",
        )


def decode_rgb(
    data: bytes, limits: ImageLimits, target: int = 224, crop: Box | None = None
) -> Image.Image:
    """Decode to RGB, the first frame of an animation; big JPEGs are draft-decoded.

    ``Image.draft`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale straight away, which is
    ~4× faster for a 12-MP photo; the result stays at least ``target`` on its short side
    (of the ``crop`` box, when there is one: the box is in the original's pixels).
    """
    info = inspect_image(data, limits)
    if crop is not None:
        check_crop(info, crop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[info.format])
            if info.format == "JPEG":
                short = min(crop[2:]) if crop else min(img.size)
                scale = short / target
                if scale >= 2:
                    img.draft("RGB", (max(target, img.size[0] // int(scale)), target))
            img.seek(0)
            img.load()
            region = img if crop is None else _cropped(img, crop, info)
            # Pillow holds RGB at 4 bytes a pixel; convert() of an RGB image would copy it,
            # doubling the peak of a 7000×7000 PNG (~200 MB → ~400 MB).
            return region if region.mode == "RGB" else region.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(ErrorCode.TOO_MANY_PIXELS, f"decompression bomb: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(
            ErrorCode.CORRUPT_IMAGE, f"the {info.format} data cannot be decoded: {exc}"
        ) from exc


def _cropped(img: Image.Image, crop: Box, info: ImageInfo) -> Image.Image:
    """The box of the original's pixels, on an image that a draft decode may have shrunk."""
    fx, fy = img.size[0] / info.width, img.size[1] / info.height
    x, y, w, h = crop
    left, top = int(x * fx), int(y * fy)
    right = max(left + 1, min(img.size[0], round((x + w) * fx)))
    bottom = max(top + 1, min(img.size[1], round((y + h) * fy)))
    return img.crop((left, top, right, bottom))


THUMBNAIL_FORMATS = {"webp": ("WEBP", "image/webp"), "jpeg": ("JPEG", "image/jpeg")}


def thumbnail(data: bytes, limits: ImageLimits, size: int, fmt: str = "webp") -> bytes:
    """The image scaled so that its longest side is at most ``size``, as WebP or JPEG.

    A big JPEG is draft-decoded close to the size first (:func:`decode_rgb`), so a
    thumbnail of a 12-MP photo costs a fraction of its full decode.
    """
    pillow_format, _ = THUMBNAIL_FORMATS[fmt]
    img = decode_rgb(data, limits, target=size)
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, format=pillow_format, quality=80)
    return out.getvalue()
