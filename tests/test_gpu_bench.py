"""bench/gpu.py runs and prints its table: on the CPU everywhere, on CUDA where present.

The rates themselves are the benchmark's business (bench/RESULTS.md); this only keeps
the command working, so that a GPU machine can run it the day one is there.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "bench" / "gpu.py"
ROW = re.compile(r"^\| (\d+) \| ([\d,]+) \| ([\d,]+) \| (.+) \|$", re.MULTILINE)


def run(*args: str) -> tuple[str, list[tuple[int, float, float, str]]]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [
        (int(b), float(m.replace(",", "")), float(j.replace(",", "")), busy)
        for b, m, j, busy in ROW.findall(done.stdout)
    ]
    return done.stdout, rows


@pytest.mark.slow
def test_the_gpu_bench_runs_on_the_cpu() -> None:
    _, rows = run("--device", "cpu", "--seconds", "0.2", "--batches", "1,2", "--images", "4",
               "--threads", "1")  # fmt: skip
    assert [r[0] for r in rows] == [1, 2]
    assert all(model > 0 and jpeg > 0 for _, model, jpeg, _ in rows)
    assert all(busy == "n/a (cpu)" for *_, busy in rows)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_gpu_bench_runs_on_cuda_in_fp16() -> None:
    out, rows = run("--device", "cuda", "--seconds", "1", "--batches", "64", "--images", "64")
    assert "torch.float16" in out.splitlines()[0]
    [(batch, model, jpeg, _)] = rows
    assert batch == 64
    assert model > 0
    assert jpeg > 0
