"""Photo-like JPEGs for the benchmarks, with nothing but numpy and Pillow behind them
(``bench/gpu.py`` runs where only PyTorch and the embedder's own packages are)."""

from __future__ import annotations

import functools
import io

import numpy as np
import numpy.typing as npt
from PIL import Image


def photo(seed: int, width: int = 640, height: int = 480, noise: float = 6.0) -> bytes:
    """A photo-like JPEG: smooth colour fields, edges and sensor-like noise (quality 90)."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC))
    field = _noise(noise)
    dy, dx = (int(v) for v in rng.integers(0, 64, size=2))
    tile = np.tile(field, (height // 256 + 2, width // 256 + 2, 1))
    pixels = base.astype(np.float32) + tile[dy : dy + height, dx : dx + width]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@functools.cache
def _noise(sigma: float) -> npt.NDArray[np.float32]:
    return np.random.default_rng(0).normal(0, sigma, size=(256, 256, 3)).astype(np.float32)
