"""CLIP on the CPU through OpenVINO: the same weights as :class:`ClipEncoder`, converted.

Measured on the 2-core dev machine, one run (bench/RESULTS.md), against torch bf16 with
the same random weights: an image alone 26.8 ms against 47.0 ms, a batch of 32 737 ms
against 895 ms, a text alone 20.2 ms against 28.0 ms; the vectors' cosine to torch
float32's is ≥ 0.9999. So on a CPU this is the embedder's default (``runtime=auto``).

Decisions:

- Three kinds of compiled model, from the torch model in float32: the whole image tower
  (search images, any batch), the image tower cut into its steps (patch embedding, each
  residual block, pooling and projection: the bulk pass runs a step at a time so that
  queries run between steps, as :meth:`ClipEncoder.encode_images_in_steps` does), and
  the text tower. Each takes any batch size. The precision is the model setting's dtype
  (``auto``: bf16 where the CPU has native bf16, f32 elsewhere) as OpenVINO's inference
  precision; inputs and outputs stay float32.
- Converting (TorchScript tracing, then OpenVINO's converter) takes ~20 s for all of it,
  so the converted models are saved under ``cache_dir``, in a folder named by the model
  id and the versions that shape the conversion (~900 MB, weights in float32), and
  compiled from those files, so that OpenVINO keeps its compiled form beside them
  (another ~900 MB): a later start maps that in (0.4 s instead of 5 s of compiling), and
  the process holds ~340 MB of anonymous memory more than torch's bf16 model (measured:
  1,150 against 807 MB after load; the rest of its RSS is those files, mapped). A cache
  that cannot be written only costs the next start its conversion.
- ``quantization=int8``: the three kinds quantized from the converted models (see
  :mod:`imgsim_embedder.quantization`), kept in an ``int8-<digest>`` folder inside the
  converted models' one, and compiled with f32 precision for what stays in floating
  point. A later start reads them back without the converted models.
- The steps hold a second copy of the image tower's weights (~176 MB in bf16): the
  price of preemptible bulk passes beside the faster whole pass for queries.
- Everything runs on the batcher's one inference thread: an infer request is not
  thread-safe, and each kind has its own.
- Once the towers are compiled, torch only prepares tensors (the eval transform, the
  batch's stack), and it does that on one thread
  (:func:`~imgsim_embedder.model.prepare_on_one_thread`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import open_clip
import openvino as ov
import torch
from open_clip.transformer import VisionTransformer
from PIL import Image

from imgsim_core.settings import ModelSettings
from imgsim_embedder import quantization
from imgsim_embedder.errors import ModelLoadError
from imgsim_embedder.model import (
    MODEL_LOAD_SECONDS,
    SliceRows,
    Steps,
    Vectors,
    cpu_has_bf16,
    create_model,
    prepare_on_one_thread,
    step_on_rows,
)

log = logging.getLogger(__name__)

_PRECISIONS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
_IMAGE = (-1, 3, 224, 224)


class _Embeds(torch.nn.Module):
    def __init__(self, visual: VisionTransformer) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.visual._embeds(x))


class _Block(torch.nn.Module):
    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.block(x, attn_mask=None))


class _Head(torch.nn.Module):
    def __init__(self, visual: VisionTransformer) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled, _ = self.visual._pool(x)
        return cast(torch.Tensor, pooled @ self.visual.proj)


class _Text(torch.nn.Module):
    def __init__(self, model: open_clip.CLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.model.encode_text(tokens))


@dataclass(frozen=True)
class _Converted:
    """The three kinds of model, in memory or as the paths of their files in the cache."""

    whole: ov.Model | str
    steps: list[ov.Model] | list[str]
    text: ov.Model | str

    def save(self, folder: Path) -> None:
        """As they are: weights in float32, so a model read back gives the same vectors
        as the one just converted (float16 would halve the ~900 MB and shift them)."""
        models = [("whole", self.whole), ("text", self.text)]
        models += [(f"step{i:02d}", step) for i, step in enumerate(self.steps)]
        for name, model in models:
            assert isinstance(model, ov.Model)
            ov.save_model(model, folder / f"{name}.xml", compress_to_fp16=False)

    @classmethod
    def at(cls, folder: Path) -> _Converted:
        steps = sorted(folder.glob("step*.xml"))
        if not steps or not (folder / "whole.xml").is_file():
            raise FileNotFoundError(folder / "whole.xml")
        return cls(
            whole=str(folder / "whole.xml"),
            steps=[str(path) for path in steps],
            text=str(folder / "text.xml"),
        )


@dataclass(frozen=True)
class _Compiled:
    whole: ov.CompiledModel
    steps: list[ov.CompiledModel]
    text: ov.CompiledModel

    @classmethod
    def of(cls, core: ov.Core, converted: _Converted, config: dict[str, Any]) -> _Compiled:
        return cls(
            whole=core.compile_model(converted.whole, "CPU", config),
            steps=[core.compile_model(step, "CPU", config) for step in converted.steps],
            text=core.compile_model(converted.text, "CPU", config),
        )


def _convert(model: open_clip.CLIP, tokenizer: Callable[[list[str]], torch.Tensor]) -> _Converted:
    """Trace and convert the towers of ``model`` (float32, on the CPU, in eval mode)."""
    visual = model.visual
    if not isinstance(visual, VisionTransformer) or visual.output_tokens:
        raise ModelLoadError(
            f"OpenVINO runs open_clip's VisionTransformer towers only, not "
            f"{type(visual).__name__}; set EMBEDDER_MODEL__RUNTIME=torch"
        )
    images = torch.zeros(2, 3, 224, 224)
    tokens = tokenizer(["a photo", "a cat"])
    # Traced without autograd: with it, torch's attention takes another path on each of
    # the tracer's two runs and the traces differ. The tracer's warnings are about the
    # attention's argument checks, which are the same for every input here.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace's deprecation
        embedded = visual._embeds(images)
        steps = [ov.convert_model(_Embeds(visual), example_input=images, input=[_IMAGE])]
        width = (-1, *embedded.shape[1:])
        steps += [
            ov.convert_model(_Block(block), example_input=embedded, input=[width])
            for block in visual.transformer.resblocks
        ]
        steps.append(ov.convert_model(_Head(visual), example_input=embedded, input=[width]))
        whole = ov.convert_model(visual, example_input=images, input=[_IMAGE])
        text = ov.convert_model(_Text(model), example_input=tokens, input=[(-1, tokens.shape[1])])
    return _Converted(whole=whole, steps=steps, text=text)


def _cache_folder(settings: ModelSettings) -> Path:
    """The model's folder in the cache: its id, and what shapes the conversion."""
    parts = [settings.model_id, ov.__version__, torch.__version__, open_clip.__version__]
    if settings.weights == "checkpoint" and settings.checkpoint_path is not None:
        stat = settings.checkpoint_path.stat()
        parts += [str(settings.checkpoint_path.resolve()), str(stat.st_size), str(stat.st_mtime_ns)]
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in settings.model_id)
    return settings.cache_dir.expanduser() / f"{slug}-{digest}"


def _compiled(
    settings: ModelSettings,
    model: open_clip.CLIP,
    tokenizer: Callable[[list[str]], torch.Tensor],
    transform: Callable[[Image.Image], torch.Tensor],
    config: dict[str, Any],
) -> _Compiled:
    """The towers compiled: from the cache's files, or converted (and quantized, for int8)
    now and kept there.

    Compiled from the files, OpenVINO keeps its compiled form beside them (``CACHE_DIR``)
    and a later start maps that in (0.4 s) instead of compiling again (5 s); the float32
    weights are then not held in memory beside the compiled bf16 ones.
    """
    folder = _cache_folder(settings)
    if settings.quantization == "none":
        return _converted(settings, folder, model, tokenizer, config)[2]
    quantization.warn_without_int8_dot_product()
    source = quantization.source(settings)
    int8_config = {**config, **quantization.FLOAT32}
    int8 = folder / f"int8-{source.digest}"
    damaged = False
    if int8.is_dir():
        try:
            towers = _Compiled.of(_core(folder), _Converted.at(int8), int8_config)
        except (FileNotFoundError, RuntimeError) as exc:
            log.warning("the int8 towers in %s cannot be read (%s); quantizing again",
                        int8, exc)  # fmt: skip
            damaged = True
        else:
            log.info("int8 towers of %s read from %s", settings.model_id, int8)
            return towers
    converted, core, _ = _converted(settings, folder, model, tokenizer, config)
    started = time.perf_counter()
    inputs = source.prepared(transform, tokenizer)
    whole, steps, text = quantization.quantize(
        core, converted.whole, converted.steps, converted.text, inputs, int8_config
    )
    log.info("quantized %s to int8 in %.1f s", settings.model_id, time.perf_counter() - started)
    quantized = _Converted(whole=whole, steps=steps, text=text)
    if isinstance(converted.whole, str) and _keep(int8, quantized.save, damaged):
        quantized = _Converted.at(int8)
    return _Compiled.of(core, quantized, int8_config)


def _converted(
    settings: ModelSettings,
    folder: Path,
    model: open_clip.CLIP,
    tokenizer: Callable[[list[str]], torch.Tensor],
    config: dict[str, Any],
) -> tuple[_Converted, ov.Core, _Compiled]:
    """The converted models, the core that compiled them, and them compiled with
    ``config``: files in ``folder`` (read back, or converted now and kept there, and
    OpenVINO's compiled forms beside them), or in memory if they cannot be kept."""
    damaged = False
    if folder.is_dir():
        core = _core(folder)
        try:
            converted = _Converted.at(folder)
            compiled = _Compiled.of(core, converted, config)
        except (FileNotFoundError, RuntimeError) as exc:  # partial, damaged, or of another version
            log.warning("the converted models in %s cannot be read (%s); converting again",
                        folder, exc)  # fmt: skip
            damaged = True
        else:
            log.info("OpenVINO models of %s read from %s", settings.model_id, folder)
            return converted, core, compiled
    started = time.perf_counter()
    converted = _convert(model, tokenizer)
    log.info(
        "converted %s for OpenVINO in %.1f s", settings.model_id, time.perf_counter() - started
    )
    if _keep(folder, converted.save, damaged):
        converted, core = _Converted.at(folder), _core(folder)
    else:
        core = ov.Core()
    return converted, core, _Compiled.of(core, converted, config)


def _keep(folder: Path, save: Callable[[Path], None], damaged: bool) -> bool:
    """``save`` into ``folder``, whole or not at all: into a staging folder beside it,
    then renamed (replacing a ``damaged`` one). False if it cannot be kept (logged)."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=folder.parent))
        try:
            save(staging)
            if damaged:
                shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)  # fails if another start was first
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        if not folder.is_dir():
            log.warning("cannot keep the models in %s (%s): the next start makes them "
                        "again", folder, exc)  # fmt: skip
            return False
    return True


def _core(folder: Path) -> ov.Core:
    """An OpenVINO core that keeps what it compiles in ``folder``/compiled."""
    core = ov.Core()
    core.set_property({"CACHE_DIR": str(folder / "compiled")})
    return core


class OpenVinoEncoder:
    """An :class:`~imgsim_embedder.model.ImageEncoder` on OpenVINO's CPU plugin."""

    def __init__(
        self,
        compiled: _Compiled,
        transform: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        *,
        model_id: str,
        dim: int,
        precision: str,
    ) -> None:
        self._whole = compiled.whole.create_infer_request()
        self._steps = [step.create_infer_request() for step in compiled.steps]
        self._text = compiled.text.create_infer_request()
        self._transform = transform
        self._tokenizer = tokenizer
        self.model_id = model_id
        self.dim = dim
        self.precision = precision
        self._warm_up()

    def _warm_up(self) -> None:
        """One pass of each kind: the first inference of a compiled model takes ~5× a later
        one (130 against 26 ms for an image alone), and it should not be a user's."""
        image = torch.zeros(1, 3, 224, 224)
        self.encode_images(image)
        for _ in self.encode_images_in_steps(image):
            pass
        self.encode_texts(["a photo"])

    @classmethod
    def load(cls, settings: ModelSettings) -> OpenVinoEncoder:
        """Build (or read back) the compiled towers; blocking (seconds), so call it off the loop."""
        started = time.perf_counter()
        if settings.device not in ("auto", "cpu"):
            raise ModelLoadError(
                f"OpenVINO runs on the CPU; EMBEDDER_MODEL__DEVICE={settings.device} needs "
                "EMBEDDER_MODEL__RUNTIME=torch"
            )
        precision = _precision(settings.dtype)
        model, transform = create_model(settings)
        model = model.eval()
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",
        }
        if settings.threads > 0:
            config["INFERENCE_NUM_THREADS"] = settings.threads
        tokenizer = cast(
            Callable[[list[str]], torch.Tensor], open_clip.get_tokenizer(settings.name)
        )
        dim = int(model.text_projection.shape[1])
        compiled = _compiled(settings, model, tokenizer, transform, config)
        del model  # the torch model is not needed once compiled: ~600 MB
        prepare_on_one_thread()
        if settings.quantization == "int8":
            precision = "int8"
        encoder = cls(
            compiled, transform, tokenizer, model_id=settings.model_id, dim=dim,
            precision=precision,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        MODEL_LOAD_SECONDS.set(seconds)
        log.info(
            "loaded %s on OpenVINO %s (CPU, %s) in %.1f s (dim %d)",
            settings.model_id, ov.__version__, precision, seconds, encoder.dim,
        )  # fmt: skip
        return encoder

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        return self._transform(img)

    def encode_images(self, batch: torch.Tensor) -> Vectors:
        return _normalised(self._whole.infer({0: _array(batch)})[0])

    def encode_images_in_steps(
        self, batch: torch.Tensor, slice_rows: SliceRows | None = None
    ) -> Steps:
        """Each step reads the previous step's output where it lies (``share_inputs`` and
        ``share_outputs``: no copies of the batch's activations between steps; a step's
        request runs again only in the next pass, after the vectors were copied out).
        Measured, batch 16: 399 ms a pass against 407 with copies; the whole graph 381.

        A step run in slices copies each slice's output out (the request's next slice
        overwrites it) and joins them. Measured, 16 rows: a pass in slices of 4 took 431 ms
        against 373 whole, in slices of 8 389 ms."""
        x = _array(batch)
        for i, request in enumerate(self._steps):
            if i:
                yield
            run = functools.partial(_infer_rows, request, x)
            parts = yield from step_on_rows(x.shape[0], slice_rows, run)
            x = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return _normalised(x)

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        tokens = self._tokenizer(list(texts)).numpy()
        return _normalised(self._text.infer({0: tokens})[0])


def _infer_rows(request: ov.InferRequest, x: Any, start: int, stop: int) -> Any:
    """A step on rows ``start:stop`` of ``x``. All of them: the output stays where the
    request wrote it. A slice: copied out, since the request's next slice overwrites it."""
    if stop - start == x.shape[0]:
        return request.infer({0: x}, share_inputs=True, share_outputs=True)[0]
    return np.array(request.infer({0: x[start:stop]}, share_inputs=True)[0])


def _precision(dtype: str) -> str:
    if dtype != "auto":
        return _PRECISIONS[dtype]
    return "bf16" if cpu_has_bf16() else "f32"


def _array(batch: torch.Tensor) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.ascontiguousarray(batch.detach().to(torch.float32).cpu().numpy())


def _normalised(features: Any) -> Vectors:
    out = np.asarray(features, dtype=np.float32)
    return cast(Vectors, out / np.linalg.norm(out, axis=1, keepdims=True))
