"""A fake :class:`ImageEncoder` for the embedder's unit tests (no torch model).

An image becomes a 1-element tensor holding its top-left red value; a row's vector is
``[value, 0, 0, 0]`` (texts: ``[len(text), 1, 0, 0]``), so tests can tell rows apart and
check their order. Every forward pass is recorded; ``gate`` can hold passes back, and a
row whose value is ``FAIL`` makes its whole pass raise. ``poison`` names red values that
preprocess to ``FAIL``; ``failures`` makes the next that many image passes raise. A
stepwise pass takes two steps before its forward pass; ``step_gate`` holds it after the
first (``stepped`` says it got there), so tests can send queries in between.
:func:`run_steps` drives a real encoder's stepwise pass to its end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from imgsim_embedder.model import SliceRows, Steps, Vectors

FAIL = -1.0


class FakeEncoder:
    model_id = "fake/test"
    dim = 4

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.poison: set[int] = set()
        self.failures = 0
        self.step_gate = threading.Event()
        self.step_gate.set()
        self.stepped = threading.Event()
        self.slices: list[int] = []  # what a stepwise pass's slice_rows() said at its start

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        red = img.convert("RGB").getpixel((0, 0))
        assert isinstance(red, tuple)
        return torch.tensor([FAIL if red[0] in self.poison else float(red[0])])

    def encode_images(self, batch: torch.Tensor) -> Vectors:
        self.calls.append(("image", batch.shape[0]))
        self.entered.set()
        self.gate.wait(10)
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("fake transient failure")
        if bool((batch[:, 0] == FAIL).any()):
            raise RuntimeError("fake model failure")
        out = np.zeros((batch.shape[0], self.dim), dtype=np.float32)
        out[:, 0] = batch[:, 0].numpy()
        return out

    def encode_images_in_steps(
        self, batch: torch.Tensor, slice_rows: SliceRows | None = None
    ) -> Steps:
        self.slices.append(slice_rows() if slice_rows else 0)
        yield
        self.stepped.set()
        self.step_gate.wait(10)
        yield
        return self.encode_images(batch)

    def encode_texts(self, texts: list[str]) -> Vectors:
        self.calls.append(("text", len(texts)))
        self.entered.set()
        self.gate.wait(10)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        out[:, 0] = [len(t) for t in texts]
        out[:, 1] = 1
        return out


def row(value: float) -> torch.Tensor:
    return torch.tensor([value])


def run_steps(steps: Steps, between: Callable[[], object] | None = None) -> tuple[Vectors, int]:
    """A stepwise pass run to its end: its vectors, and how many times it yielded.
    ``between`` runs at each yield, as a query served between two steps would."""
    taken = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value, taken
        taken += 1
        if between is not None:
            between()
