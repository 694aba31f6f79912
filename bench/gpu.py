"""The embedder's GPU path, measured in one command (under 5 minutes on one GPU).

    uv run python bench/gpu.py                       # cuda when present, else cpu
    uv run python bench/gpu.py --device cuda:1 --batches 64,128,256,512
    uv run python bench/gpu.py --device cpu --seconds 0.5 --batches 2,4 --images 16  # smoke

Prints, for each batch size:

- model only: img/s of the embedder's encoder on preprocessed tensors already on the
  device (fp16 on CUDA, the embedder's default);
- JPEG bytes → vectors: img/s from 640×480 JPEG bytes, decoded and preprocessed by the
  embedder's own code (``decode_rgb`` with draft decoding, the model's transform) on
  ``--threads`` CPU threads into pinned host memory, copied without blocking and encoded,
  with the next batch prepared while the device runs the current one;
- GPU utilisation during that run (NVML through torch, when available).

Random weights (seed 0): the speed of ViT-B/32 does not depend on its weights.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
from photos import photo  # bench/photos.py: this script's folder is on sys.path

from imgsim_core.images import decode_rgb
from imgsim_core.settings import ImageLimits, ModelSettings
from imgsim_embedder.model import ClipEncoder

LIMITS = ImageLimits()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def utilisation(device: torch.device) -> str:
    if device.type != "cuda":
        return "n/a (cpu)"
    try:
        return f"{torch.cuda.utilization(device)} %"
    except Exception as exc:  # NVML missing: say so rather than guess
        return f"n/a ({type(exc).__name__})"


def model_only(encoder: ClipEncoder, device: torch.device, batch: int, seconds: float) -> float:
    x = torch.randn(batch, 3, 224, 224, device=device)
    encoder.encode_images(x)
    sync(device)
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or done == 0:
        encoder.encode_images(x)
        done += batch
    sync(device)
    return done / (time.perf_counter() - started)


def prepare(encoder: ClipEncoder, data: bytes) -> torch.Tensor:
    return encoder.preprocess(decode_rgb(data, LIMITS))


def batches(
    encoder: ClipEncoder, jpegs: list[bytes], batch: int, pool: ThreadPoolExecutor, pin: bool
) -> Iterator[torch.Tensor]:
    """Preprocessed batches, forever, cycling through ``jpegs``; prepared in ``pool``."""
    index = 0
    while True:
        chunk = [jpegs[(index + i) % len(jpegs)] for i in range(batch)]
        index += batch
        stacked = torch.stack(list(pool.map(functools.partial(prepare, encoder), chunk)))
        yield stacked.pin_memory() if pin else stacked


def from_jpeg_bytes(
    encoder: ClipEncoder,
    device: torch.device,
    jpegs: list[bytes],
    batch: int,
    threads: int,
    seconds: float,
) -> tuple[float, str]:
    """img/s with preparation of batch k+1 overlapping the device's work on batch k."""
    ready: queue.Queue[torch.Tensor | None] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def feed() -> None:
        with ThreadPoolExecutor(threads) as pool:
            for tensors in batches(encoder, jpegs, batch, pool, pin=device.type == "cuda"):
                if stop.is_set():
                    break
                ready.put(tensors)
        ready.put(None)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    first = ready.get()
    assert first is not None
    encoder.encode_images(first)  # warm-up
    sync(device)
    done = 0
    busy: str | None = None
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or done == 0:
        tensors = ready.get()
        assert tensors is not None
        encoder.encode_images(tensors)  # copies with non_blocking=True from pinned memory
        done += batch
        if done == batch * 3:  # sampled while the device is busy
            busy = utilisation(device)
    if busy is None:  # a run too short for the sample above
        busy = utilisation(device)
    sync(device)
    rate = done / (time.perf_counter() - started)
    stop.set()
    while ready.get() is not None:  # let the feeder finish
        pass
    feeder.join()
    return rate, busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA), float32, ...")
    parser.add_argument("--batches", default="32,64,128,256", help="comma-separated sizes")
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="decode")
    parser.add_argument("--images", type=int, default=256, help="distinct JPEGs to cycle")
    args = parser.parse_args()
    settings = ModelSettings(weights="random", seed=0, device=args.device, dtype=args.dtype)
    encoder = ClipEncoder.load(settings)
    device = encoder.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — {platform.node()}, "
        f"{device} ({name or platform.machine()}), {encoder.dtype}, {os.cpu_count()} CPU "
        f"cores, {args.threads} decode threads, torch {torch.__version__}"
    )
    jpegs = [photo(i) for i in range(args.images)]
    print("| batch | model only (img/s) | JPEG bytes → vectors (img/s) | GPU busy |")
    print("| --- | --- | --- | --- |")
    for batch in (int(b) for b in args.batches.split(",")):
        model = model_only(encoder, device, batch, args.seconds)
        rate, busy = from_jpeg_bytes(encoder, device, jpegs, batch, args.threads, args.seconds)
        print(f"| {batch} | {model:,.0f} | {rate:,.0f} | {busy} |", flush=True)


if __name__ == "__main__":
    main()
