"""Distinct generated test images (no files, no downloads)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw


def make_image(seed: int, size: int = 128, fmt: str = "PNG") -> bytes:
    """An image that differs from every other seed: colours, blocks and shapes from a seed."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(2, 9)
    grid = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
    image = Image.fromarray(grid).resize((size, size), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 5))):
        x0, y0 = (int(v) for v in rng.integers(0, size // 2, size=2))
        x1, y1 = x0 + int(rng.integers(8, size // 2)), y0 + int(rng.integers(8, size // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A small PNG that claims a huge size: the start of a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
