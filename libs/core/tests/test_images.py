from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from imgsim_core.images import ImageError, decode_rgb, inspect_image, sniff_format, thumbnail
from imgsim_core.settings import ImageLimits

LIMITS = ImageLimits()


def encode(fmt: str, size: tuple[int, int] = (32, 24), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (200, 30, 90) if mode == "RGB" else 128).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_allowed_formats_are_sniffed_and_decoded(fmt: str) -> None:
    data = encode(fmt)
    assert sniff_format(data) == fmt
    info = inspect_image(data, LIMITS)
    assert (info.format, info.width, info.height) == (fmt, 32, 24)
    image = decode_rgb(data, LIMITS)
    assert image.mode == "RGB"
    assert image.size == (32, 24)


def test_format_comes_from_the_bytes_not_the_name() -> None:
    with pytest.raises(ImageError) as err:
        inspect_image(encode("TIFF"), LIMITS)
    assert err.value.code == "unsupported_format"


def test_truncated_image_is_rejected_as_corrupt() -> None:
    data = encode("PNG", (64, 64))
    with pytest.raises(ImageError) as err:
        decode_rgb(data[: len(data) // 2], LIMITS)
    assert err.value.code == "corrupt_image"


def test_too_many_pixels_rejected_from_the_header() -> None:
    data = encode("PNG", (200, 100), mode="L")
    with pytest.raises(ImageError) as err:
        inspect_image(data, ImageLimits(max_pixels=10_000))
    assert err.value.code == "too_many_pixels"


def test_too_many_bytes_rejected() -> None:
    data = encode("BMP", (300, 300))
    with pytest.raises(ImageError) as err:
        inspect_image(data, ImageLimits(max_bytes=1024))
    assert err.value.code == "image_too_large"


def test_empty_is_rejected() -> None:
    with pytest.raises(ImageError) as err:
        inspect_image(b"", LIMITS)
    assert err.value.code == "empty_image"


def test_large_jpeg_is_draft_decoded_but_keeps_enough_pixels() -> None:
    data = encode("JPEG", (2000, 1500))
    image = decode_rgb(data, LIMITS)
    assert min(image.size) >= 224
    assert image.size[0] < 2000


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_escape_as_anything_but_image_error(data: bytes) -> None:
    try:
        outcome = decode_rgb(data, LIMITS).mode
    except ImageError as exc:
        outcome = exc.code
    assert outcome in {
        "RGB",
        "empty_image",
        "unsupported_format",
        "corrupt_image",
        "too_many_pixels",
    }


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=512), st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP"]))
def test_valid_header_with_garbage_body_is_an_image_error(garbage: bytes, fmt: str) -> None:
    data = encode(fmt)
    corrupted = data[:16] + garbage
    try:
        outcome = decode_rgb(corrupted, LIMITS).mode
    except ImageError as exc:
        outcome = exc.code
    assert outcome in {"RGB", "corrupt_image", "unsupported_format", "too_many_pixels"}


def test_decoding_a_big_rgb_png_holds_one_copy_of_its_pixels(tmp_path: Path) -> None:
    """Peak memory of one decode, in a fresh process that holds nothing else big: Pillow's
    RGB is 4 bytes a pixel, and converting an image that is RGB already held it twice."""
    side = 4000
    png = tmp_path / "big.png"
    Image.new("RGB", (side, side), (40, 90, 200)).save(png, format="PNG")  # ~100 KB
    script = f"""
from pathlib import Path
from imgsim_core.images import decode_rgb
from imgsim_core.settings import ImageLimits
def status(field):
    line = next(x for x in open("/proc/self/status") if x.startswith(field + ":"))
    return int(line.split()[1])
data = Path({str(png)!r}).read_bytes()
open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to now
before = status("VmRSS")
image = decode_rgb(data, ImageLimits())
assert image.mode == "RGB" and image.size == ({side}, {side})
print(status("VmHWM") - before)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    grown_bytes = int(done.stdout.strip()) * 1024
    one_copy = side * side * 4
    assert one_copy * 0.8 < grown_bytes < one_copy * 1.4, (
        f"{grown_bytes / 1e6:.0f} MB for {one_copy / 1e6:.0f} MB of pixels"
    )


@pytest.mark.parametrize(
    ("fmt", "size", "longest", "expected"),
    [
        ("JPEG", (4000, 3000), 256, (256, 192)),
        ("PNG", (300, 900), 128, (43, 128)),
        ("GIF", (50, 40), 256, (50, 40)),
    ],
)
def test_thumbnails_keep_the_aspect_and_never_upscale(
    fmt: str, size: tuple[int, int], longest: int, expected: tuple[int, int]
) -> None:
    for out_format, pillow_name in (("webp", "WEBP"), ("jpeg", "JPEG")):
        data = thumbnail(encode(fmt, size), LIMITS, longest, out_format)
        with Image.open(io.BytesIO(data)) as img:
            assert (img.format, img.size, img.mode) == (pillow_name, expected, "RGB")


def test_a_thumbnail_of_bad_bytes_is_an_image_error() -> None:
    with pytest.raises(ImageError) as caught:
        thumbnail(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, LIMITS, 64)
    assert caught.value.code == "corrupt_image"


def quadrants(size: tuple[int, int], fmt: str) -> bytes:
    """An image whose right half is white and left half black."""
    img = Image.new("RGB", size, (0, 0, 0))
    img.paste((255, 255, 255), (size[0] // 2, 0, size[0], size[1]))
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=95)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_crop_is_in_the_originals_pixels_even_after_a_draft_decode(fmt: str) -> None:
    data = quadrants((3000, 2000), fmt)  # a JPEG this big is draft-decoded at 1/8

    right = decode_rgb(data, LIMITS, crop=(1600, 100, 1200, 1200))
    left = decode_rgb(data, LIMITS, crop=(0, 0, 1400, 1800))

    assert min(right.size) >= 224
    assert min(right.getchannel(0).tobytes()) > 200  # white: the box stayed in the right half
    assert max(left.getchannel(0).tobytes()) < 50
    assert right.size[0] / right.size[1] == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize(
    "box", [(0, 0, 33, 10), (31, 0, 2, 2), (0, 24, 1, 1)], ids=["wide", "right", "below"]
)
def test_a_crop_outside_the_image_is_a_bad_crop(box: tuple[int, int, int, int]) -> None:
    with pytest.raises(ImageError) as info:
        decode_rgb(encode("PNG"), LIMITS, crop=box)
    assert info.value.code == "bad_crop"
    assert "32×24" in info.value.message
