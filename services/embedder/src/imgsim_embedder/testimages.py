"""Distinct synthetic test images: encoded bytes that tests can index and search for.

Image ``i`` of a set combines a solid colour, a gradient direction, a shape and a size
(64–256 px) and alternates PNG and JPEG, so every image of a set differs in colour, layout
and format. Deterministic: the same ``i`` gives the same bytes. Used by this service's
tests and importable by the end-to-end tests (``from imgsim_embedder.testimages import
test_image``); it needs only Pillow.
"""

from __future__ import annotations

import colorsys
import io

from PIL import Image, ImageDraw

_SIZES = (64, 96, 128, 160, 192, 224, 256)
_SHAPES = ("none", "ellipse", "rectangle", "triangle", "stripes", "checker")


def distinct_image_pil(i: int) -> Image.Image:
    """The ``i``-th distinct image as a PIL RGB image."""
    size = _SIZES[i % len(_SIZES)]
    w, h = size, _SIZES[(i * 3 + 1) % len(_SIZES)]
    hue = (i * 0.618033988749895) % 1.0  # golden-ratio hues are spread apart
    base = tuple(int(c * 255) for c in colorsys.hsv_to_rgb(hue, 0.85, 0.95))
    other = tuple(int(c * 255) for c in colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.9, 0.35))
    img = Image.new("RGB", (w, h), base)
    if i % 3 == 1:  # gradient from base to other, horizontal or vertical
        horizontal = (i // 3) % 2 == 0
        steps = w if horizontal else h
        draw = ImageDraw.Draw(img)
        for s in range(steps):
            t = s / max(1, steps - 1)
            colour = tuple(int(b + (o - b) * t) for b, o in zip(base, other, strict=True))
            box = (s, 0, s, h) if horizontal else (0, s, w, s)
            draw.line(box, fill=colour)
    draw = ImageDraw.Draw(img)
    shape = _SHAPES[i % len(_SHAPES)]
    if shape == "ellipse":
        draw.ellipse((w // 5, h // 5, w * 4 // 5, h * 4 // 5), fill=other)
    elif shape == "rectangle":
        draw.rectangle((w // 8, h // 3, w * 5 // 8, h * 7 // 8), fill=other)
    elif shape == "triangle":
        draw.polygon([(w // 2, h // 8), (w // 8, h * 7 // 8), (w * 7 // 8, h * 7 // 8)], fill=other)
    elif shape == "stripes":
        band = max(4, w // (4 + i % 5))
        for x in range(0, w, band * 2):
            draw.rectangle((x, 0, x + band - 1, h), fill=other)
    elif shape == "checker":
        cell = max(8, min(w, h) // (2 + i % 4))
        for y in range(0, h, cell):
            for x in range(0, w, cell):
                if (x // cell + y // cell) % 2:
                    draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=other)
    return img


def distinct_image(i: int) -> tuple[bytes, str]:
    """The ``i``-th distinct image, encoded: ``(bytes, content type)``; even i PNG, odd JPEG."""
    img = distinct_image_pil(i)
    buf = io.BytesIO()
    if i % 2 == 0:
        img.save(buf, format="PNG")
        return buf.getvalue(), "image/png"
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue(), "image/jpeg"


def distinct_images(n: int) -> list[tuple[bytes, str]]:
    """``n`` distinct encoded images."""
    return [distinct_image(i) for i in range(n)]
