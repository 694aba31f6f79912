# ruff: noqa: T201  (a benchmark prints its numbers; root per-file-ignores only cover bench/)
"""Measures fp32 vs bf16 CLIP ViT-B-32 (random weights, seed 0) on CPU for the e2e test's needs.

(a) cosine of one image embedded alone vs inside a batch of 30, (b) max cosine between two
different images of a 30-image set, and whether each image's own vector is its top hit,
(c) img/s at batch 1 and 32. Run: ``.venv/bin/python services/embedder/bench/measure_dtype.py``.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from imgsim_core.images import decode_rgb
from imgsim_core.settings import ImageLimits, ModelSettings
from imgsim_embedder.model import ClipEncoder
from imgsim_embedder.testimages import distinct_images

N = 30


def main() -> None:
    imgs = [decode_rgb(b, ImageLimits()) for b, _ in distinct_images(N)]
    for dtype in ("float32", "bfloat16"):
        enc = ClipEncoder.load(ModelSettings(weights="random", seed=0, dtype=dtype, device="cpu"))
        tensors = [enc.preprocess(im) for im in imgs]
        batch = enc.encode_images(torch.stack(tensors))
        single = np.concatenate([enc.encode_images(t.unsqueeze(0)) for t in tensors])
        same = (batch * single).sum(1)
        sims = single @ batch.T
        off = sims.copy()
        np.fill_diagonal(off, -1)
        top_ok = int((sims.argmax(1) == np.arange(N)).sum())
        margin = (np.diag(sims) - off.max(1)).min()
        gram = batch @ batch.T
        np.fill_diagonal(gram, -1)
        print(
            f"{dtype}: same-image batch1 vs batch30 1-cos max={1 - same.min():.2e}; "
            f"max cos between different images={gram.max():.6f}; top1 own={top_ok}/{N}; "
            f"min margin own-vs-best-other={margin:.6f}"
        )
        for bs in (1, 32):
            x = torch.stack([tensors[i % N] for i in range(bs)])
            enc.encode_images(x)
            reps = 10 if bs == 1 else 3
            t0 = time.perf_counter()
            for _ in range(reps):
                enc.encode_images(x)
            dt = (time.perf_counter() - t0) / reps
            print(f"  {dtype} batch {bs}: {bs / dt:.1f} img/s ({dt * 1000:.1f} ms/batch)")
        if dtype == "float32":
            ref = batch
        else:
            print(f"  bf16 vs fp32 same image 1-cos max={1 - (batch * ref).sum(1).min():.2e}")


if __name__ == "__main__":
    main()
