# ruff: noqa: T201  (a benchmark prints its numbers; root per-file-ignores only cover bench/)
"""CPU runtimes for the image tower, side by side in one run: img/s and agreement with fp32.

The same CLIP ViT-B/32 weights (random, seed 0) on the embedder's preprocessed tensors of
32 distinct images (none of those int8 is calibrated on), each runtime timed for
``--seconds`` at batch 1 and batch 32 with all the cores torch sees, and its vectors
compared with torch float32's (the lowest cosine of the 32). The runtimes a CPU user would pick:

- torch float32, and torch bfloat16 (the embedder's ``auto`` dtype where the CPU has bf16);
- torch with dynamic int8 quantization of the Linear layers (``quantize_dynamic``);
- OpenVINO, the model exported with ``torch.export`` and compiled for the CPU with its
  bf16 and its f32 inference precision;
- the embedder's own OpenVINO encoder (TorchScript-traced, its default precision), as it
  is and with ``EMBEDDER_MODEL__QUANTIZATION=int8`` (NNCF's static int8; the first run
  quantizes, ~60 s, and keeps the result in the model cache).

A runtime is worth adopting only if it is faster here and keeps cosine ≥ 0.99 to fp32.

    uv run python services/embedder/bench/measure_runtimes.py
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch

from imgsim_core.images import decode_rgb
from imgsim_core.settings import ImageLimits, ModelSettings
from imgsim_embedder.model import ClipEncoder, load_encoder
from imgsim_embedder.testimages import distinct_images

Encode = Callable[[torch.Tensor], npt.NDArray[np.float32]]


def rate(encode: Encode, batch: torch.Tensor, seconds: float) -> float:
    encode(batch)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        encode(batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def openvino_encoder(model: torch.nn.Module, example: torch.Tensor, precision: str) -> Encode:
    import openvino as ov

    exported = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    compiled = ov.Core().compile_model(
        ov.convert_model(exported),
        "CPU",
        {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"},
    )
    request = compiled.create_infer_request()

    def encode(batch: torch.Tensor) -> npt.NDArray[np.float32]:
        out = np.asarray(request.infer({0: batch.numpy()})[0], dtype=np.float32)
        normalised: npt.NDArray[np.float32] = out / np.linalg.norm(out, axis=1, keepdims=True)
        return normalised

    return encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    images = [decode_rgb(data, ImageLimits()) for data, _ in distinct_images(132)[100:]]
    fp32 = ClipEncoder.load(ModelSettings(weights="random", seed=0, dtype="float32", device="cpu"))
    batch = torch.stack([fp32.preprocess(im) for im in images])
    reference = fp32.encode_images(batch)

    runtimes: dict[str, Encode] = {"torch float32": fp32.encode_images}
    bf16 = ClipEncoder.load(ModelSettings(weights="random", seed=0, dtype="bfloat16", device="cpu"))
    runtimes["torch bfloat16"] = bf16.encode_images
    int8 = copy.copy(fp32)  # the same encoder around a quantized copy of the model
    int8._model = torch.ao.quantization.quantize_dynamic(
        fp32._model, {torch.nn.Linear}, dtype=torch.qint8
    )
    runtimes["torch dynamic int8 (Linear)"] = int8.encode_images
    visual = fp32._model.visual.eval()
    for precision in ("bf16", "f32"):
        started = time.perf_counter()
        runtimes[f"OpenVINO {precision}"] = openvino_encoder(visual, batch[:2], precision)
        took = time.perf_counter() - started
        print(f"OpenVINO {precision}: exported and compiled in {took:.1f} s")
    threads = torch.get_num_threads()
    for quantization in ("none", "int8"):
        settings = ModelSettings(
            weights="random", seed=0, device="cpu", runtime="openvino", quantization=quantization
        )
        embedder = load_encoder(settings)
        runtimes[f"the embedder's OpenVINO, quantization {quantization}"] = embedder.encode_images
    torch.set_num_threads(threads)  # the encoder leaves torch one thread: the torch rows need all

    print(f"{torch.get_num_threads()} threads, {args.seconds:.0f} s per figure")
    print("| runtime | batch 1 | batch 32 | lowest cosine to torch float32 |")
    print("| --- | --- | --- | --- |")
    for name, encode in runtimes.items():
        one = rate(encode, batch[:1], args.seconds)
        many = rate(encode, batch, args.seconds)
        cosine = float((reference * encode(batch)).sum(axis=1).min())
        print(
            f"| {name} | {one:.1f} img/s ({1000 / one:.1f} ms) | {many:.1f} img/s | {cosine:.6f} |"
        )


if __name__ == "__main__":
    main()
