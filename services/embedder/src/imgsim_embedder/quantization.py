"""int8 image towers for OpenVINO: NNCF's post-training quantization, checked against float32.

``EMBEDDER_MODEL__QUANTIZATION=int8`` runs the image tower's matrix products in int8 (this
CPU has AVX-512 VNNI). Measured on the 2-core dev machine with random weights (seed 0),
against this embedder's OpenVINO bf16 in the same run (bench/RESULTS.md, 2026-12-07): an
image alone 17.3 ms against 29.5, batch 32 74.1 images/s against 43.9, the vectors'
lowest cosine to float32's 0.9997; `make bench` end to end 44.6 images/s against 27.3.

Decisions:

- Static quantization with NNCF (``nncf.quantize``, ``ModelType.TRANSFORMER``: softmax,
  layer norms and GELU stay in floating point, SmoothQuant eases the activations'
  outliers into the weights). Calibrated on images: the first of those in
  ``calibration_dir`` (up to 128), or 64 built-in synthetic images. The built-in images
  are flat colours and shapes, not photographs: with real weights, calibrate on your own.
- Both forms of the image tower are quantized: the whole one (queries) and its steps (the
  bulk pass, which lets queries run between steps). Step ``i`` is calibrated on what the
  float32 steps before it give for the calibration images.
- The quantized towers run with OpenVINO's f32 inference precision for what stays in
  floating point: measured faster than bf16 there (in a probe, an image alone 21.1
  against 23.2 ms; batch 16 the same) and closer to float32.
- Checked before use: the whole tower and the steps on held-out images (the last 16 of
  ``calibration_dir`` by name, or 16 more built-in ones) against the float32 tower; a
  lowest cosine under :data:`MIN_COSINE` refuses to start, naming the figure.
- Texts stay in the model's dtype: a text tower would need text calibration, and a text
  query is already the cheaper one.
- Quantizing takes ~60 s of the two cores at the first start; the towers are kept in the
  converted models' folder, named by NNCF's version and the calibration images, so a later
  start reads them back.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch
from PIL import Image

from imgsim_core.images import ImageError, decode_rgb
from imgsim_core.settings import ImageLimits, ModelSettings
from imgsim_embedder.errors import ModelLoadError
from imgsim_embedder.testimages import distinct_images

log = logging.getLogger(__name__)

MIN_COSINE = 0.99
"""The lowest cosine an int8 vector may have to the float32 one of the same image."""

BUILT_IN_IMAGES = 64
HELD_OUT = 16
MAX_CALIBRATION = 128
MIN_IMAGES = 32
"""Images ``calibration_dir`` must hold: ``HELD_OUT`` for the check and the rest to calibrate."""

_BATCH = 8
_SUFFIXES = (".jpg", ".jpeg", ".png")
FLOAT32 = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}

Array = np.ndarray[Any, np.dtype[np.float32]]


@dataclass(frozen=True)
class Calibration:
    """Preprocessed images to calibrate on and to check with, and what names them."""

    images: Array
    held_out: Array
    source: str

    @property
    def digest(self) -> str:
        """Names the quantized towers in the cache: NNCF's version and these images."""
        parts = [nncf_version(), self.source, str(len(self.images)), str(len(self.held_out))]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def nncf_version() -> str:
    try:
        return metadata.version("nncf")
    except metadata.PackageNotFoundError:
        raise ModelLoadError(
            "EMBEDDER_MODEL__QUANTIZATION=int8 needs NNCF (pip install nncf)"
        ) from None


def calibration(
    settings: ModelSettings, transform: Callable[[Image.Image], torch.Tensor]
) -> Calibration:
    """The images of ``settings.calibration_dir`` (or the built-in ones), preprocessed."""
    folder = settings.calibration_dir
    if folder is None:
        named = [(f"built-in image {i}", data) for i, (data, _) in
                 enumerate(distinct_images(BUILT_IN_IMAGES + HELD_OUT))]  # fmt: skip
        source = f"built-in:{BUILT_IN_IMAGES}"
        if settings.weights != "random":
            log.warning(
                "int8 calibrated on built-in synthetic images (flat colours and shapes): "
                "set EMBEDDER_MODEL__CALIBRATION_DIR to some of your own images"
            )
    else:
        named, source = _folder_images(folder.expanduser())
    prepared = np.stack([_prepared(name, data, transform) for name, data in named])
    return Calibration(prepared[:-HELD_OUT], prepared[-HELD_OUT:], source)


def _folder_images(folder: Path) -> tuple[list[tuple[str, bytes]], str]:
    if not folder.is_dir():
        raise ModelLoadError(f"EMBEDDER_MODEL__CALIBRATION_DIR {folder} is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in _SUFFIXES and p.is_file())
    if len(paths) < MIN_IMAGES:
        raise ModelLoadError(
            f"EMBEDDER_MODEL__CALIBRATION_DIR {folder} holds {len(paths)} JPEG/PNG images; "
            f"int8 needs at least {MIN_IMAGES} (the last {HELD_OUT} by name check it)"
        )
    paths = paths[:-HELD_OUT][:MAX_CALIBRATION] + paths[-HELD_OUT:]
    source = "\0".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths)
    return [(str(p), p.read_bytes()) for p in paths], source


def _prepared(name: str, data: bytes, transform: Callable[[Image.Image], torch.Tensor]) -> Array:
    try:
        image = decode_rgb(data, ImageLimits())
    except ImageError as exc:
        raise ModelLoadError(f"calibration image {name} cannot be read: {exc}") from exc
    return np.asarray(transform(image).numpy(), dtype=np.float32)


def quantize(
    core: ov.Core,
    whole: ov.Model | str,
    steps: Sequence[ov.Model | str],
    images: Calibration,
    config: dict[str, Any],
) -> tuple[ov.Model, list[ov.Model]]:
    """The whole tower and its steps in int8, checked on the held-out images (compiled with
    ``config``, as they will run) against the float32 whole tower."""
    try:
        import nncf
    except ImportError:
        nncf_version()  # names the missing package
        raise
    whole_model = _model(core, whole)
    step_models = [_model(core, step) for step in steps]
    batches = [images.images[i : i + _BATCH] for i in range(0, len(images.images), _BATCH)]

    def quantized(model: ov.Model, inputs: list[Array]) -> ov.Model:
        # NNCF draws progress bars on stdout (rich); a service's stdout is its logs.
        with contextlib.redirect_stdout(io.StringIO()):
            return nncf.quantize(
                model,
                nncf.Dataset(inputs),
                model_type=nncf.ModelType.TRANSFORMER,
                subset_size=len(inputs),  # items of the dataset: batches, all of them
            )

    int8_whole = quantized(whole_model, batches)
    int8_steps = []
    for step in step_models:
        int8_steps.append(quantized(step, batches))
        float32 = core.compile_model(step, "CPU", FLOAT32)
        batches = [np.array(float32(batch)[0]) for batch in batches]
    reference = _run(core, [whole_model], FLOAT32, images.held_out)
    lowest = min(
        lowest_cosine(reference, _run(core, [int8_whole], config, images.held_out)),
        lowest_cosine(reference, _run(core, int8_steps, config, images.held_out)),
    )
    if lowest < MIN_COSINE:
        raise ModelLoadError(
            f"int8 vectors reach a lowest cosine of {lowest:.5f} to float32's on the held-out "
            f"calibration images, under {MIN_COSINE}: calibrate on images like yours "
            "(EMBEDDER_MODEL__CALIBRATION_DIR) or set EMBEDDER_MODEL__QUANTIZATION=none"
        )
    log.info("int8 towers checked: lowest cosine to float32 %.5f on %d held-out images",
             lowest, len(images.held_out))  # fmt: skip
    return int8_whole, int8_steps


def _model(core: ov.Core, model: ov.Model | str) -> ov.Model:
    return core.read_model(model) if isinstance(model, str) else model


def _run(core: ov.Core, models: Sequence[ov.Model], config: dict[str, Any], x: Array) -> Array:
    for model in models:
        x = np.array(core.compile_model(model, "CPU", config)(x)[0], dtype=np.float32)
    return x


def lowest_cosine(a: Array, b: Array) -> float:
    """The lowest cosine between the rows of ``a`` and ``b`` (not normalised)."""
    dots = (a * b).sum(axis=1)
    return float((dots / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())
