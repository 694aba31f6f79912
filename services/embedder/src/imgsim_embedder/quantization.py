"""int8 towers for OpenVINO: NNCF's post-training quantization, checked against float32.

``EMBEDDER_MODEL__QUANTIZATION=int8`` runs both towers' matrix products in int8. Measured
on the 2-core dev machine (AMD EPYC with AVX-512 VNNI) with random weights (seed 0),
against this embedder's OpenVINO bf16 in the same run (bench/RESULTS.md, 2026-12-07): an
image alone 17.3 ms against 29.5, batch 32 74.1 images/s against 43.9, the vectors'
lowest cosine to float32's 0.9997; `make bench` end to end 44.6 images/s against 27.3.
On a 2-core AMD EPYC with AVX2 only (no VNNI, no AVX-512; bench/RESULTS.md, 2026-12-08)
int8 was no faster than f32: an image alone 9.7 against 11.0 images/s, batch 32 11.0
against 12.3 (medians of four alternating runs). So a start with int8 on a CPU without
int8 dot-product instructions logs a warning (:func:`int8_dot_product`).

Decisions:

- Static quantization with NNCF (``nncf.quantize``, ``ModelType.TRANSFORMER``: softmax,
  layer norms and GELU stay in floating point, SmoothQuant eases the activations'
  outliers into the weights). The image towers are calibrated on images: the first of
  those in ``calibration_dir`` (up to 128), or 64 built-in synthetic images. The built-in
  images are flat colours and shapes, not photographs: with real weights, calibrate on
  your own. The text tower is calibrated on 64 built-in captions ("a photo of a red cat
  on a beach", adjective × thing × place), which are what text queries look like.
- Both forms of the image tower are quantized: the whole one (queries) and its steps (the
  bulk pass, which lets queries run between steps). Step ``i`` is calibrated on what the
  float32 steps before it give for the calibration images.
- The quantized towers run with OpenVINO's f32 inference precision for what stays in
  floating point: measured faster than bf16 there (in a probe, an image alone 21.1
  against 23.2 ms, a text 13.7 against 18.3; batch 16 the same) and closer to float32.
- Checked before use: the whole tower and the steps on held-out images (the last 16 of
  ``calibration_dir`` by name, or 16 more built-in ones), the text tower on 16 held-out
  captions, each against its float32 tower; a lowest cosine under :data:`MIN_COSINE`
  refuses to start, naming the figure. Measured with random weights: images 0.9997,
  texts 0.998 (a probe: a text alone 13.7 ms against 20.0 for bf16, batch 8 1.6×).
- Where the CPU has no int8 dot products (or cannot tell), OpenVINO multiplies u8 by s8
  with ``vpmaddubsw``, whose 16-bit sums saturate (:func:`int8_saturates`). There the
  weights are quantized to 7 bits: NNCF's default (that fix on the first layer only)
  left a stand-in tower at cosine 0.983 to float32 on an AVX2-only CPU, 0.99997 with
  ``OverflowFix.ENABLE``; CLIP's image tower went from 0.9973 to 0.9994. The text tower
  stays in float32 there: in int8 it fell to 0.969 (median 0.984) on 78 varied captions
  even with 7-bit weights, though it passed the check on the held-out built-in captions;
  and int8 was no faster on that CPU. Where the CPU has VNNI or AMX the weights keep all
  8 bits and both towers are int8. The choice is part of the cache's name, so towers
  made for one kind of CPU are never read on the other.
- Quantizing takes ~60 s of the two cores at the first start; the towers are kept in the
  converted models' folder, named by NNCF's version and the calibration inputs, so a later
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
"""The lowest cosine an int8 vector may have to the float32 one of the same input."""

BUILT_IN_IMAGES = 64
HELD_OUT = 16
MAX_CALIBRATION = 128
MIN_IMAGES = 32
"""Images ``calibration_dir`` must hold: ``HELD_OUT`` for the check and the rest to calibrate."""

_BATCH = 8
_SUFFIXES = (".jpg", ".jpeg", ".png")
FLOAT32 = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}

Array = np.ndarray[Any, np.dtype[np.float32]]
Tokens = np.ndarray[Any, np.dtype[np.int64]]

_ADJECTIVES = ("red", "small", "old", "shiny", "wet", "striped", "blurry", "bright", "dark")
_THINGS = ("cat", "car", "house", "bicycle", "mountain", "bowl of soup", "dog", "laptop", "ship")
_PLACES = ("on a beach", "in the snow", "at night", "on a table", "in a city street",
           "under a bridge", "in a forest", "on a white background")  # fmt: skip


@dataclass(frozen=True)
class Calibration:
    """Preprocessed images and tokenized captions to calibrate on and to check with."""

    images: Array
    held_out: Array
    texts: Tokens
    held_out_texts: Tokens


@dataclass(frozen=True)
class Source:
    """The calibration inputs, named but not read: a start that finds its int8 towers in
    the cache needs only :attr:`digest`; :meth:`prepared` reads them to quantize."""

    paths: list[Path] | None  # None: the built-in images
    name: str

    @property
    def digest(self) -> str:
        """Names the quantized towers in the cache: NNCF's version and these inputs."""
        images = len(self.paths) if self.paths else BUILT_IN_IMAGES + HELD_OUT
        parts = [nncf_version(), self.name, str(images), "texts", str(BUILT_IN_IMAGES + HELD_OUT)]
        if int8_saturates():
            parts.append("overflow_fix=enable")
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]

    def prepared(
        self,
        transform: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
    ) -> Calibration:
        """The images preprocessed (the last ``HELD_OUT`` held out), and the built-in
        captions tokenized."""
        if self.paths is None:
            named = [(f"built-in image {i}", data) for i, (data, _) in
                     enumerate(distinct_images(BUILT_IN_IMAGES + HELD_OUT))]  # fmt: skip
        else:
            named = [(str(p), p.read_bytes()) for p in self.paths]
        images = np.stack([_prepared(name, data, transform) for name, data in named])
        texts = tokenizer(captions(BUILT_IN_IMAGES + HELD_OUT)).numpy()
        tokens = np.asarray(texts, dtype=np.int64)
        return Calibration(
            images[:-HELD_OUT], images[-HELD_OUT:], tokens[:-HELD_OUT], tokens[-HELD_OUT:]
        )


def nncf_version() -> str:
    try:
        return metadata.version("nncf")
    except metadata.PackageNotFoundError:
        raise ModelLoadError(
            "EMBEDDER_MODEL__QUANTIZATION=int8 needs NNCF (pip install nncf)"
        ) from None


_INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
_CPUINFO = Path("/proc/cpuinfo")


def int8_dot_product(cpuinfo: Path = _CPUINFO) -> bool | None:
    """Whether this x86 CPU multiplies int8 in hardware dot products (AVX-512 VNNI,
    AVX-VNNI or AMX), as Linux lists its flags; None where it cannot tell (no such file,
    or no x86 ``flags`` line in it)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    flags = next((line for line in text.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return None
    return not _INT8_DOT_FLAGS.isdisjoint(flags.partition(":")[2].split())


def int8_saturates(cpuinfo: Path = _CPUINFO) -> bool:
    """Whether int8 products may saturate here: everywhere but on a CPU known to have int8
    dot products. Where they may, weights are quantized to 7 bits (NNCF's
    ``OverflowFix.ENABLE``) and the text tower stays in float32."""
    return int8_dot_product(cpuinfo) is not True


def warn_without_int8_dot_product(cpuinfo: Path = _CPUINFO) -> None:
    if int8_dot_product(cpuinfo) is False:
        log.warning(
            "EMBEDDER_MODEL__QUANTIZATION=int8 on a CPU without VNNI or AMX: int8 was "
            "measured no faster than f32 on such a CPU (AVX2 only: 9.7 against 11.0 "
            "images/s for an image alone), and its vectors are less exact (here the image "
            "towers get 7-bit weights and the text tower stays in float32); "
            "EMBEDDER_MODEL__QUANTIZATION=none is the better setting here"
        )


def captions(n: int) -> list[str]:
    """``n`` distinct built-in captions, spread over the adjectives, things and places."""
    every = [f"a photo of a {a} {t} {p}" for p in _PLACES for t in _THINGS for a in _ADJECTIVES]
    stride = 7  # prime to the 648 captions: n of them are spread over all three lists
    return [every[(i * stride) % len(every)] for i in range(n)]


def source(settings: ModelSettings) -> Source:
    """The images of ``settings.calibration_dir`` (listed, not read), or the built-in ones."""
    folder = settings.calibration_dir
    if folder is not None:
        return _folder_source(folder.expanduser())
    if settings.weights != "random":
        log.warning(
            "int8 calibrated on built-in synthetic images (flat colours and shapes): "
            "set EMBEDDER_MODEL__CALIBRATION_DIR to some of your own images"
        )
    return Source(None, f"built-in:{BUILT_IN_IMAGES}")


def _folder_source(folder: Path) -> Source:
    if not folder.is_dir():
        raise ModelLoadError(f"EMBEDDER_MODEL__CALIBRATION_DIR {folder} is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in _SUFFIXES and p.is_file())
    if len(paths) < MIN_IMAGES:
        raise ModelLoadError(
            f"EMBEDDER_MODEL__CALIBRATION_DIR {folder} holds {len(paths)} JPEG/PNG images; "
            f"int8 needs at least {MIN_IMAGES} (the last {HELD_OUT} by name check it)"
        )
    paths = paths[:-HELD_OUT][:MAX_CALIBRATION] + paths[-HELD_OUT:]
    name = "\0".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths)
    return Source(paths, name)


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
    text: ov.Model | str,
    inputs: Calibration,
    config: dict[str, Any],
    saturates: bool | None = None,
) -> tuple[ov.Model, list[ov.Model], ov.Model]:
    """The whole image tower, its steps and the text tower in int8, each checked on the
    held-out inputs (compiled with ``config``, as they will run) against float32's.
    ``saturates`` (default: :func:`int8_saturates` of this CPU): 7-bit weights, and the
    text tower returned as it is, in float32."""
    try:
        import nncf
    except ImportError:
        nncf_version()  # names the missing package
        raise
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
    )

    if saturates is None:
        saturates = int8_saturates()
    fix = OverflowFix.ENABLE if saturates else OverflowFix.FIRST_LAYER
    advanced = AdvancedQuantizationParameters(overflow_fix=fix)
    whole_model, text_model = _model(core, whole), _model(core, text)
    step_models = [_model(core, step) for step in steps]

    def quantized(model: ov.Model, batches: Sequence[np.ndarray[Any, Any]]) -> ov.Model:
        # NNCF draws progress bars on stdout (rich); a service's stdout is its logs.
        with contextlib.redirect_stdout(io.StringIO()):
            return nncf.quantize(
                model,
                nncf.Dataset(list(batches)),
                model_type=nncf.ModelType.TRANSFORMER,
                subset_size=len(batches),  # items of the dataset: batches, all of them
                advanced_parameters=advanced,
            )

    batches = _batches(inputs.images)
    int8_whole = quantized(whole_model, batches)
    int8_steps = []
    for step in step_models:
        int8_steps.append(quantized(step, batches))
        float32 = core.compile_model(step, "CPU", FLOAT32)
        batches = [np.array(float32(batch)[0]) for batch in batches]
    int8_text = text_model if saturates else quantized(text_model, _batches(inputs.texts))
    reference = _run(core, [whole_model], FLOAT32, inputs.held_out)
    images = min(
        lowest_cosine(reference, _run(core, [int8_whole], config, inputs.held_out)),
        lowest_cosine(reference, _run(core, int8_steps, config, inputs.held_out)),
    )
    texts = lowest_cosine(
        _run(core, [text_model], FLOAT32, inputs.held_out_texts),
        _run(core, [int8_text], config, inputs.held_out_texts),
    )
    for what, lowest in (("images", images), ("captions", texts)):
        if lowest < MIN_COSINE:
            raise ModelLoadError(
                f"int8 vectors reach a lowest cosine of {lowest:.5f} to float32's on the "
                f"held-out calibration {what}, under {MIN_COSINE}: calibrate on images like "
                "yours (EMBEDDER_MODEL__CALIBRATION_DIR) or set EMBEDDER_MODEL__QUANTIZATION=none"
            )
    log.info("int8 towers checked: lowest cosine to float32 %.5f on %d held-out images, "
             "%.5f on %d captions%s", images, len(inputs.held_out), texts,
             len(inputs.held_out_texts),
             "; 7-bit weights and the text tower in float32 (int8 products saturate here)"
             if saturates else "")  # fmt: skip
    return int8_whole, int8_steps, int8_text


def _batches(x: np.ndarray[Any, Any]) -> list[np.ndarray[Any, Any]]:
    return [x[i : i + _BATCH] for i in range(0, len(x), _BATCH)]


def _model(core: ov.Core, model: ov.Model | str) -> ov.Model:
    return core.read_model(model) if isinstance(model, str) else model


def _run(
    core: ov.Core, models: Sequence[ov.Model], config: dict[str, Any], x: np.ndarray[Any, Any]
) -> Array:
    for model in models:
        x = np.array(core.compile_model(model, "CPU", config)(x)[0], dtype=np.float32)
    return x


def lowest_cosine(a: Array, b: Array) -> float:
    """The lowest cosine between the rows of ``a`` and ``b`` (not normalised)."""
    dots = (a * b).sum(axis=1)
    return float((dots / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())
