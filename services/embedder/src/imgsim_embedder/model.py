"""The CLIP image/text encoder behind a small Protocol.

:class:`ImageEncoder` is all the batcher and the handlers know; :class:`ClipEncoder` is the
open_clip implementation on torch, and :class:`~imgsim_embedder.openvino_encoder.OpenVinoEncoder`
the same weights converted for OpenVINO; :func:`load_encoder` picks one by the ``runtime``
setting (``auto``: OpenVINO on the CPU, torch on a GPU). Decisions:

- Weights: ``pretrained`` (hub tag, cached on disk by open_clip), ``checkpoint`` (a local
  file: anything open_clip's ``load_checkpoint`` reads — a bare state_dict or a training
  checkpoint with a ``state_dict`` key) or ``random`` (seeded; logged as a warning because
  its vectors mean nothing for real search).
- Precision: CUDA runs float16 weights. On CPU the ``auto`` dtype is **bfloat16**
  weights and input (``model.to(torch.bfloat16)``) where oneDNN has native bf16 kernels
  (AVX512-BF16/AMX), float32 elsewhere. Measured on the 2-core dev machine with random
  weights (``bench/measure_dtype.py``): bf16 is 2–5× faster (batch 1: 20–25 vs 4–12
  img/s; batch 32: 28–42 vs 9–19 img/s, a shared noisy machine), a vector differs from
  fp32's by 1 − cos ≤ 5.3e-5, and an image gives the identical vector alone or in a batch
  of 30 (1 − cos = 0). Random-weight vectors of different images are close (max cosine
  0.991 in a 30-image set), yet the 0.009 margin is ~170× bf16's error, so search by the
  same bytes still finds itself first. Autocast is never used on CPU (it adds ~1.2 s a
  call in open_clip's ViT).
- Vectors are L2-normalised in float32 whatever the compute dtype.
- ``preprocess`` is open_clip's own eval transform (resize, centre crop, normalise),
  thread-safe, and returns float32; the cast to the compute dtype happens per batch.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Generator
from typing import Protocol, TypeVar, cast

import numpy as np
import numpy.typing as npt
import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from PIL import Image
from prometheus_client import Gauge

from imgsim_core.settings import ModelSettings
from imgsim_embedder.errors import ModelLoadError

log = logging.getLogger(__name__)

MODEL_LOAD_SECONDS = Gauge(
    "imgsim_embedder_model_load_seconds", "Seconds it took to load the CLIP model."
)

Vectors = npt.NDArray[np.float32]
Steps = Generator[None, None, Vectors]
# How many rows a step of a stepwise pass runs at a time, asked before each step (0: all).
SliceRows = Callable[[], int]
Part = TypeVar("Part")  # what one run of a step on some rows gives
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ImageEncoder(Protocol):
    """What the batcher needs from a model: preprocess one image, encode a batch."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """One RGB image → a (3, H, W) tensor; thread-safe."""
        ...

    def encode_images(self, batch: torch.Tensor) -> Vectors:
        """(n, 3, H, W) → (n, dim) float32, L2-normalised."""
        ...

    def encode_images_in_steps(
        self, batch: torch.Tensor, slice_rows: SliceRows | None = None
    ) -> Steps:
        """The vectors of :meth:`encode_images`, computed a step at a time: each ``next()``
        runs one step (one transformer block) on a slice of ``slice_rows()`` rows (all rows
        when it is 0 or there is none), and the generator returns the vectors. The batcher
        runs search queries between the steps of a bulk batch."""
        ...

    def encode_texts(self, texts: list[str]) -> Vectors:
        """n texts → (n, dim) float32, L2-normalised."""
        ...


def load_encoder(settings: ModelSettings) -> ImageEncoder:
    """The encoder ``settings.runtime`` names: OpenVINO (``auto`` on the CPU; see
    :mod:`imgsim_embedder.openvino_encoder`) or torch (``auto`` where CUDA is)."""
    runtime = settings.runtime
    if runtime == "auto":
        runtime = "torch" if pick_device(settings.device).type == "cuda" else "openvino"
    if settings.quantization == "int8" and runtime != "openvino":
        raise ModelLoadError(
            "EMBEDDER_MODEL__QUANTIZATION=int8 runs on OpenVINO, on the CPU: set "
            "EMBEDDER_MODEL__RUNTIME=openvino (or auto without a GPU), or QUANTIZATION=none"
        )
    if runtime == "openvino":
        from imgsim_embedder.openvino_encoder import OpenVinoEncoder  # CPU only: not on GPUs

        return OpenVinoEncoder.load(settings)
    return ClipEncoder.load(settings)


def prepare_on_one_thread() -> None:
    """One torch thread, where torch only prepares tensors and the model runs elsewhere
    (OpenVINO, a GPU). Torch's OpenMP threads spin after each parallel region: decoding
    and preprocessing a 640×480 JPEG took 5.4 ms of CPU with two threads against 2.8 ms
    with one, in the same wall time (2.7 ms), the spinning taken from the model's cores.
    Images are prepared side by side on the preprocessing pool's threads instead."""
    torch.set_num_threads(1)


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting != "auto":
        return _DTYPES[setting]
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def cpu_has_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels here (else bf16 is emulated and slow)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class ClipEncoder:
    """An open_clip CLIP model in eval mode on one device and dtype."""

    def __init__(
        self,
        model: open_clip.CLIP,
        transform: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        *,
        model_id: str,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self._model = model
        self._transform = transform
        self._tokenizer = tokenizer
        self._device = device
        self._dtype = dtype
        self._model_id = model_id
        self._dim = int(model.text_projection.shape[1])

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @classmethod
    def load(cls, settings: ModelSettings) -> ClipEncoder:
        """Build the model named by ``settings``; blocking (seconds), so call it off the loop."""
        started = time.perf_counter()
        if settings.threads > 0:
            torch.set_num_threads(settings.threads)
        device = pick_device(settings.device)
        dtype = pick_dtype(settings.dtype, device)
        model, transform = create_model(settings)
        # The parameters keep requires_grad=True: inference_mode records no autograd state
        # either way, and with it off, torch 2.x runs each linear layer on the text tower's
        # transposed (seq, batch, dim) input as a bmm over a weight copied per batch row:
        # a batch of 6 texts took 1.1 s instead of ~0.1 s in bf16 (bench/RESULTS.md).
        model = model.to(device=device, dtype=dtype).eval()
        if device.type == "cuda" and settings.threads == 0:
            prepare_on_one_thread()
        tokenizer = open_clip.get_tokenizer(settings.name)
        encoder = cls(
            model,
            transform,
            tokenizer,
            model_id=settings.model_id,
            device=device,
            dtype=dtype,
        )
        seconds = time.perf_counter() - started
        MODEL_LOAD_SECONDS.set(seconds)
        log.info(
            "loaded %s on %s as %s in %.1f s (dim %d, %d threads)",
            settings.model_id,
            device,
            dtype,
            seconds,
            encoder.dim,
            torch.get_num_threads(),
        )
        return encoder

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        return self._transform(img)

    def encode_images(self, batch: torch.Tensor) -> Vectors:
        with torch.inference_mode():
            if self._device.type == "cuda" and not batch.is_pinned():
                batch = batch.pin_memory()  # so that the copy below does not block the host
            x = batch.to(device=self._device, dtype=self._dtype, non_blocking=True)
            features = self._model.encode_image(x)
            return _normalised(features)

    def encode_images_in_steps(
        self, batch: torch.Tensor, slice_rows: SliceRows | None = None
    ) -> Steps:
        """open_clip's ``VisionTransformer.forward`` cut between its residual blocks, each
        block run on slices of rows when ``slice_rows`` asks for it.

        Any other vision tower (or one with options this does not follow) runs whole, as
        a single step. Each step enters inference mode itself, so other forward passes can
        run on the same thread between steps.
        """
        visual = self._model.visual
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if not isinstance(visual, VisionTransformer) or blocks is None or visual.output_tokens:
            yield
            return self.encode_images(batch)
        with torch.inference_mode():
            x = visual._embeds(batch.to(device=self._device, dtype=self._dtype))
            if not visual.transformer.batch_first:
                x = x.transpose(0, 1)
        rows_at = 0 if visual.transformer.batch_first else 1
        for block in blocks:
            yield
            run = functools.partial(_block_on_rows, block, x, rows_at)
            parts = yield from step_on_rows(x.shape[rows_at], slice_rows, run)
            with torch.inference_mode():
                x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=rows_at)
        yield
        with torch.inference_mode():
            if not visual.transformer.batch_first:
                x = x.transpose(0, 1)
            pooled, _ = visual._pool(x)
            if visual.proj is not None:
                pooled = pooled @ visual.proj
            return _normalised(pooled)

    def encode_texts(self, texts: list[str]) -> Vectors:
        with torch.inference_mode():
            tokens = self._tokenizer(texts).to(self._device)
            features = self._model.encode_text(tokens)
            return _normalised(features)


def step_on_rows(
    count: int, slice_rows: SliceRows | None, run: Callable[[int, int], Part]
) -> Generator[None, None, list[Part]]:
    """One step of a stepwise pass over ``count`` rows: ``run(start, stop)`` once on all of
    them, or on slices of ``slice_rows()`` rows (asked now) with a yield between two; the
    parts, in row order."""
    rows = slice_rows() if slice_rows else 0
    if not 0 < rows < count:
        rows = count
    parts = []
    for start in range(0, count, rows):
        if start:
            yield
        parts.append(run(start, min(start + rows, count)))
    return parts


def _block_on_rows(
    block: torch.nn.Module, x: torch.Tensor, rows_at: int, start: int, stop: int
) -> torch.Tensor:
    with torch.inference_mode():
        return cast(torch.Tensor, block(x.narrow(rows_at, start, stop - start), attn_mask=None))


def _normalised(features: torch.Tensor) -> Vectors:
    unit = F.normalize(features.float(), dim=-1)
    return cast(Vectors, unit.cpu().numpy().astype(np.float32, copy=False))


def create_model(
    settings: ModelSettings,
) -> tuple[open_clip.CLIP, Callable[[Image.Image], torch.Tensor]]:
    """The model in fp32 on CPU, and its eval transform."""
    try:
        if settings.weights == "pretrained":
            model, _, transform = open_clip.create_model_and_transforms(
                settings.name, pretrained=settings.pretrained
            )
        elif settings.weights == "checkpoint":
            path = settings.checkpoint_path
            if path is None or not path.is_file():
                raise ModelLoadError(
                    f"EMBEDDER_MODEL__CHECKPOINT_PATH must name a checkpoint file, got {path}"
                )
            model, _, transform = open_clip.create_model_and_transforms(settings.name)
            open_clip.load_checkpoint(model, str(path))
        else:
            log.warning(
                "RANDOM WEIGHTS (seed %d): %s produces vectors that are meaningless for real "
                "search; use EMBEDDER_MODEL__WEIGHTS=pretrained or checkpoint in production",
                settings.seed,
                settings.name,
            )
            torch.manual_seed(settings.seed)
            model, _, transform = open_clip.create_model_and_transforms(
                settings.name, pretrained=None
            )
    except ModelLoadError:
        raise
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(
            f"cannot load {settings.name} ({settings.weights} weights): {exc}"
        ) from exc
    return cast(open_clip.CLIP, model), cast(Callable[[Image.Image], torch.Tensor], transform)
