"""int8 quantization's parts on their own: the calibration inputs a setting names, and the
check that refuses towers whose vectors stray from float32's (on small stand-in towers,
so that this runs in seconds; test_openvino_encoder quantizes CLIP itself)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import numpy as np
import openvino as ov
import pytest
import torch

from imgsim_core.images import decode_rgb
from imgsim_core.settings import ImageLimits, ModelSettings
from imgsim_embedder import quantization
from imgsim_embedder.errors import ModelLoadError
from imgsim_embedder.quantization import Calibration, lowest_cosine, quantize, source
from imgsim_embedder.testimages import distinct_image


def transform(image: object) -> torch.Tensor:
    """A stand-in for the eval transform: the image's mean colour, spread over 3×224×224."""
    pixels = np.asarray(image, dtype=np.float32).mean(axis=(0, 1)) / 255
    return torch.from_numpy(pixels).reshape(3, 1, 1).expand(3, 224, 224).contiguous()


def write_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        data, kind = distinct_image(i)
        path = folder / f"{i:03d}.{'png' if kind == 'image/png' else 'jpg'}"
        path.write_bytes(data)
        paths.append(path)
    return paths


def tokenizer(texts: list[str]) -> torch.Tensor:
    """A stand-in tokenizer: each text's word lengths, padded to 8 (values < 16)."""
    rows = [[len(word) % 16 for word in text.split()][:8] for text in texts]
    return torch.tensor([row + [0] * (8 - len(row)) for row in rows], dtype=torch.int64)


def settings(folder: Path | None) -> ModelSettings:
    return ModelSettings(weights="random", quantization="int8", calibration_dir=folder)


def test_a_folder_calibrates_on_its_images_and_holds_the_last_sixteen_out(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "mine", 40)
    (tmp_path / "mine" / "notes.txt").write_text("not an image, not counted")
    mine = source(settings(tmp_path / "mine"))
    images = mine.prepared(transform, tokenizer)
    assert images.images.shape == (24, 3, 224, 224)
    assert images.held_out.shape == (16, 3, 224, 224)
    expected = transform(_decoded(paths[-1])).numpy()
    np.testing.assert_allclose(images.held_out[-1], expected, atol=1e-6)  # by name, last
    before = mine.digest
    paths[0].write_bytes(distinct_image(99)[0])  # another image under the same name
    os.utime(paths[0], ns=(1, 1))
    assert source(settings(tmp_path / "mine")).digest != before


def test_without_a_folder_the_built_in_images_calibrate() -> None:
    built_in = source(settings(None))
    images = built_in.prepared(transform, tokenizer)
    assert images.images.shape[0] == quantization.BUILT_IN_IMAGES
    assert images.held_out.shape[0] == quantization.HELD_OUT
    assert images.texts.shape == (quantization.BUILT_IN_IMAGES, 8)
    assert images.held_out_texts.shape == (quantization.HELD_OUT, 8)
    assert images.texts.dtype == np.int64
    assert built_in.digest == source(settings(None)).digest  # a later start finds its towers


def test_the_built_in_captions_are_distinct_and_spread() -> None:
    texts = quantization.captions(80)
    assert len(set(texts)) == 80
    assert len({text.split()[4] for text in texts}) >= 8  # many kinds of thing, not one


def test_a_folder_too_small_or_holding_a_bad_image_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a folder"):
        source(settings(tmp_path / "missing"))
    write_images(tmp_path / "few", 31)
    with pytest.raises(ModelLoadError, match="holds 31 JPEG/PNG images; int8 needs at least 32"):
        source(settings(tmp_path / "few"))
    paths = write_images(tmp_path / "bad", 32)
    paths[5].write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(ModelLoadError, match=f"calibration image {paths[5]} cannot be read"):
        source(settings(tmp_path / "bad")).prepared(transform, tokenizer)


class _Stem(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool = torch.nn.AvgPool2d(16)
        self.linear = torch.nn.Linear(3 * 14 * 14, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.linear(self.pool(x).flatten(1)))


class _Text(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(16, 64)
        self.linear = torch.nn.Linear(64 * 8, 64)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.linear(self.embedding(tokens).flatten(1)))


class _Head(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.linear(torch.nn.functional.gelu(x)))


Towers = tuple[ov.Model, list[ov.Model], ov.Model, Calibration]


@pytest.fixture(scope="module")
def towers() -> Towers:
    """Stand-ins for the image tower (two steps) and the text tower, and random inputs to
    calibrate them on."""
    torch.manual_seed(0)
    stem, head, text = _Stem().eval(), _Head().eval(), _Text().eval()
    x = torch.rand(2, 3, 224, 224)
    tokens = torch.randint(0, 16, (2, 8))
    with torch.no_grad():
        whole = ov.convert_model(torch.nn.Sequential(stem, head), example_input=x)
        steps = [
            ov.convert_model(stem, example_input=x),
            ov.convert_model(head, example_input=stem(x)),
        ]
        text_model = ov.convert_model(text, example_input=tokens)
    rng = np.random.default_rng(0)
    images = rng.random((40, 3, 224, 224), dtype=np.float32)
    texts = rng.integers(0, 16, (40, 8), dtype=np.int64)
    inputs = Calibration(images[:24], images[24:], texts[:24], texts[24:])
    return whole, steps, text_model, inputs


def fake_quantized(model: ov.Model) -> bool:
    return "FakeQuantize" in {op.get_type_name() for op in model.get_ops()}


@pytest.mark.parametrize("saturates", [True, False], ids=["7-bit weights", "8-bit weights"])
def test_quantized_towers_are_int8_and_agree_with_float32(towers: Towers, saturates: bool) -> None:
    """With 7-bit weights (a CPU whose int8 products saturate) the text tower stays float32;
    with 8 bits both are int8. 8-bit weights on such a CPU fall under the bar (0.983 here
    on an AVX2-only CPU), so that case runs only where the CPU has int8 dot products."""
    if not saturates and quantization.int8_saturates():
        pytest.skip("8-bit weights saturate on this CPU (no VNNI or AMX)")
    whole, steps, text, inputs = towers
    int8_whole, int8_steps, int8_text = quantize(
        ov.Core(), whole, steps, text, inputs, quantization.FLOAT32, saturates=saturates
    )
    assert len(int8_steps) == 2
    assert all(fake_quantized(model) for model in (int8_whole, *int8_steps))
    assert fake_quantized(int8_text) is not saturates
    core = ov.Core()
    for float32, int8, x in ((whole, int8_whole, inputs.held_out),
                             (text, int8_text, inputs.held_out_texts)):  # fmt: skip
        expected = core.compile_model(float32, "CPU", quantization.FLOAT32)(x)[0]
        got = core.compile_model(int8, "CPU", quantization.FLOAT32)(x)[0]
        assert lowest_cosine(np.asarray(expected), np.asarray(got)) >= quantization.MIN_COSINE


def test_towers_under_the_bar_are_refused(towers: Towers, monkeypatch: pytest.MonkeyPatch) -> None:
    whole, steps, text, inputs = towers
    monkeypatch.setattr(quantization, "MIN_COSINE", 1.0001)  # no quantized tower reaches it
    refused = r"lowest cosine of [01]\.\d{5} to float32's on the held-out calibration images"
    with pytest.raises(ModelLoadError, match=refused):
        quantize(ov.Core(), whole, steps, text, inputs, quantization.FLOAT32)


def test_lowest_cosine_is_of_the_rows_as_they_are() -> None:
    a = np.array([[1.0, 0.0], [3.0, 4.0]], dtype=np.float32)
    b = np.array([[2.0, 0.0], [4.0, -3.0]], dtype=np.float32)
    assert lowest_cosine(a, b) == pytest.approx(0.0)
    assert lowest_cosine(a, a * 5) == pytest.approx(1.0)


def _decoded(path: Path) -> object:
    return decode_rgb(path.read_bytes(), ImageLimits())


ZEN3 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
ALDER_LAKE = "processor\t: 0\nflags\t\t: fpu avx2 avx_vnni\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx512f amx_bf16 amx_tile amx_int8\n"


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [(ZEN3, False), (ZEN4, True), (ALDER_LAKE, True), (SAPPHIRE_RAPIDS, True)],
)
def test_int8_dot_products_are_read_from_the_cpu_flags(
    tmp_path: Path, cpuinfo: str, expected: bool
) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert quantization.int8_dot_product(path) is expected


def test_int8_without_dot_products_is_warned_of_and_unknown_cpus_are_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(ZEN3)
    with caplog.at_level("WARNING", logger=quantization.__name__):
        quantization.warn_without_int8_dot_product(path)
    assert ["without VNNI or AMX" in r.getMessage() for r in caplog.records] == [True]
    caplog.clear()
    for cpuinfo in (ZEN4, None):  # None: no /proc/cpuinfo (not Linux)
        if cpuinfo is not None:
            path.write_text(cpuinfo)
        with caplog.at_level("WARNING", logger=quantization.__name__):
            quantization.warn_without_int8_dot_product(path if cpuinfo else tmp_path / "none")
    assert caplog.records == []


def test_int8_is_taken_to_saturate_unless_dot_products_are_known(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    arm = "Features\t: fp asimd asimddp\n"  # dot products, but not VNNI: not known here
    for cpuinfo, saturates in ((ZEN3, True), (ZEN4, False), (arm, True)):
        path.write_text(cpuinfo)
        assert quantization.int8_saturates(path) is saturates
    assert quantization.int8_saturates(tmp_path / "none") is True


def test_towers_made_for_either_kind_of_cpu_are_named_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    digests = set()
    for saturates in (True, False):
        monkeypatch.setattr(quantization, "int8_saturates", lambda saturates=saturates: saturates)
        digests.add(source(settings(None)).digest)
    assert len(digests) == 2
