"""The OpenVINO encoder against torch on the same random weights (seed 0): the vectors
agree, the stepwise pass equals the whole one, the converted models are kept and read
back, ``runtime`` picks the encoder, and int8 keeps its bar.

Converting takes ~20 s and quantizing ~60 s, so one encoder of each (and one cache
folder) serves the module.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from embedder_fakes import run_steps

from imgsim_core.images import decode_rgb
from imgsim_core.settings import ImageLimits, ModelSettings
from imgsim_embedder.errors import ModelLoadError
from imgsim_embedder.model import ClipEncoder, Vectors, load_encoder
from imgsim_embedder.openvino_encoder import OpenVinoEncoder
from imgsim_embedder.quantization import MIN_COSINE, int8_saturates
from imgsim_embedder.testimages import distinct_images

pytestmark = pytest.mark.slow

TEXTS = ["a photo of a cat", "a red car", "two dogs on a beach"]


@pytest.fixture(scope="module", autouse=True)
def torch_threads() -> Iterator[None]:
    """Loading the encoder leaves torch one thread, for the whole process; the tests of
    the other modules get theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("openvino")


@pytest.fixture(scope="module")
def settings(cache: Path) -> ModelSettings:
    return ModelSettings(
        weights="random", seed=0, device="cpu", runtime="openvino", cache_dir=cache
    )


@pytest.fixture(scope="module")
def encoder(settings: ModelSettings) -> OpenVinoEncoder:
    loaded = load_encoder(settings)
    assert isinstance(loaded, OpenVinoEncoder)
    return loaded


@pytest.fixture(scope="module")
def reference() -> ClipEncoder:
    return ClipEncoder.load(ModelSettings(weights="random", seed=0, device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def images(encoder: OpenVinoEncoder) -> torch.Tensor:
    return torch.stack(
        [encoder.preprocess(decode_rgb(data, ImageLimits())) for data, _ in distinct_images(6)]
    )


def stepwise(encoder: OpenVinoEncoder, batch: torch.Tensor) -> tuple[Vectors, int]:
    return run_steps(encoder.encode_images_in_steps(batch))


def test_image_vectors_match_torch_float32_of_the_same_weights(
    encoder: OpenVinoEncoder, reference: ClipEncoder, images: torch.Tensor
) -> None:
    vectors = encoder.encode_images(images)
    assert vectors.shape == (6, 512)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * reference.encode_images(images)).sum(axis=1)
    assert cosines.min() >= 0.999, cosines
    assert encoder.model_id == reference.model_id
    assert encoder.dim == 512


def test_the_stepwise_pass_gives_the_whole_passs_vectors(
    encoder: OpenVinoEncoder, images: torch.Tensor
) -> None:
    vectors, steps = stepwise(encoder, images)
    assert steps == 13  # between the patch embedding, the 12 blocks and the head
    assert (vectors * encoder.encode_images(images)).sum(axis=1).min() >= 0.9999
    one, _ = stepwise(encoder, images[:1])  # any batch size, alone or batched
    assert float((one[0] * vectors[0]).sum()) >= 0.9999


def test_torch_keeps_one_thread_once_the_towers_are_compiled(encoder: OpenVinoEncoder) -> None:
    """Torch only prepares tensors then; its idle OpenMP threads spun beside the model."""
    assert torch.get_num_threads() == 1


def test_text_vectors_match_torch_float32(encoder: OpenVinoEncoder, reference: ClipEncoder) -> None:
    vectors = encoder.encode_texts(TEXTS)
    assert vectors.shape == (3, 512)
    assert (vectors * reference.encode_texts(TEXTS)).sum(axis=1).min() >= 0.999
    alone = encoder.encode_texts(TEXTS[:1])
    assert float((alone[0] * vectors[0]).sum()) >= 0.9999


def test_a_later_start_reads_the_converted_models_back(
    encoder: OpenVinoEncoder,
    settings: ModelSettings,
    cache: Path,
    images: torch.Tensor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (folder,) = cache.iterdir()  # one model, one folder; no staging folder left behind
    assert (folder / "whole.xml").is_file()
    assert (folder / "text.xml").is_file()
    assert len(list(folder.glob("step*.xml"))) == 14
    assert any((folder / "compiled").iterdir())  # OpenVINO's compiled form, for the next start
    with caplog.at_level(logging.INFO, logger="imgsim_embedder.openvino_encoder"):
        again = OpenVinoEncoder.load(settings)
    assert "read from" in caplog.text
    assert "converted" not in caplog.text
    np.testing.assert_allclose(again.encode_images(images), encoder.encode_images(images))


def test_a_damaged_cache_is_converted_again(
    encoder: OpenVinoEncoder,
    settings: ModelSettings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (kept,) = settings.cache_dir.iterdir()
    folder = tmp_path / kept.name
    shutil.copytree(kept, folder)
    (folder / "whole.xml").write_text("not a model")
    with caplog.at_level(logging.INFO, logger="imgsim_embedder.openvino_encoder"):
        again = OpenVinoEncoder.load(settings.model_copy(update={"cache_dir": tmp_path}))
    assert "cannot be read" in caplog.text
    assert "converted" in caplog.text
    np.testing.assert_allclose(
        again.encode_texts(TEXTS[:1]), encoder.encode_texts(TEXTS[:1]), atol=1e-6
    )
    assert "not a model" not in (folder / "whole.xml").read_text(errors="replace")
    assert [p.name for p in tmp_path.iterdir()] == [kept.name]


def test_runtime_picks_the_encoder(encoder: OpenVinoEncoder, cache: Path) -> None:
    cpu = ModelSettings(weights="random", device="cpu", runtime="torch", cache_dir=cache)
    assert isinstance(load_encoder(cpu), ClipEncoder)
    assert isinstance(load_encoder(cpu.model_copy(update={"runtime": "auto"})), OpenVinoEncoder)
    with pytest.raises(ModelLoadError, match="RUNTIME=torch"):
        load_encoder(cpu.model_copy(update={"device": "cuda", "runtime": "openvino"}))


def test_stepwise_vectors_are_their_own_while_other_passes_run(
    encoder: OpenVinoEncoder, images: torch.Tensor
) -> None:
    """The steps hand activations on without copies: a pass's vectors must not change when
    the next stepwise pass runs, nor a pass's steps when a query runs between them."""
    first, _ = stepwise(encoder, images[:3])
    kept = first.copy()
    steps = encoder.encode_images_in_steps(images[3:])
    next(steps)
    query = encoder.encode_images(images[:1])  # a query between two steps of a bulk pass
    while True:
        try:
            next(steps)
        except StopIteration as done:
            second = done.value
            break
    np.testing.assert_array_equal(first, kept)
    assert (second * encoder.encode_images(images[3:])).sum(axis=1).min() >= 0.9999
    assert (query * kept[:1]).sum() >= 0.9999


def test_a_stepwise_pass_in_slices_gives_the_whole_passs_vectors(
    encoder: OpenVinoEncoder, images: torch.Tensor
) -> None:
    """Each step on slices of 4 of the 6 rows (a full slice and a short one), a yield
    between slices; a query between two slices changes nothing."""
    sliced, taken = run_steps(
        encoder.encode_images_in_steps(images, lambda: 4), lambda: encoder.encode_images(images[:1])
    )
    assert taken == 14 * 2 - 1  # the 14 steps in two slices each
    assert (sliced * encoder.encode_images(images)).sum(axis=1).min() >= 0.9999
    whole, _ = stepwise(encoder, images)
    np.testing.assert_allclose(sliced, whole, atol=1e-5)


@pytest.fixture(scope="module")
def int8(settings: ModelSettings) -> OpenVinoEncoder:
    """Quantized once for the module (~60 s), from the float32 models the cache holds."""
    loaded = load_encoder(settings.model_copy(update={"quantization": "int8"}))
    assert isinstance(loaded, OpenVinoEncoder)
    return loaded


@pytest.fixture(scope="module")
def unseen(encoder: OpenVinoEncoder) -> torch.Tensor:
    """Images that are not among the 80 built-in ones int8 is calibrated and checked on."""
    encoded = distinct_images(96)[88:]
    return torch.stack([encoder.preprocess(decode_rgb(data, ImageLimits())) for data, _ in encoded])


def test_int8_vectors_keep_the_bar_against_float32_of_the_same_weights(
    int8: OpenVinoEncoder, encoder: OpenVinoEncoder, reference: ClipEncoder, unseen: torch.Tensor
) -> None:
    expected = reference.encode_images(unseen)
    whole = int8.encode_images(unseen)
    stepwise_, _ = stepwise(int8, unseen)
    assert (whole * expected).sum(axis=1).min() >= MIN_COSINE
    assert (stepwise_ * expected).sum(axis=1).min() >= MIN_COSINE
    assert (whole * encoder.encode_images(unseen)).sum(axis=1).min() < 0.99999  # int8, not bf16
    texts = int8.encode_texts(TEXTS)  # not among the captions int8 is calibrated on
    assert (texts * reference.encode_texts(TEXTS)).sum(axis=1).min() >= MIN_COSINE
    if int8_saturates():  # the text tower stays float32 on such a CPU
        assert (texts * reference.encode_texts(TEXTS)).sum(axis=1).min() >= 0.99999
    else:
        assert (texts * encoder.encode_texts(TEXTS)).sum(axis=1).min() < 0.99999
    assert int8.model_id == encoder.model_id  # the same space: int8 and bf16 vectors mix
    assert int8.precision == "int8"


def test_the_int8_towers_are_kept_and_read_back_alone(
    int8: OpenVinoEncoder,
    settings: ModelSettings,
    unseen: torch.Tensor,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A later start needs only the int8 folder: here, a cache holding nothing else."""
    (folder,) = settings.cache_dir.iterdir()
    (kept,) = folder.glob("int8-*")
    assert (kept / "whole.xml").is_file()
    assert (kept / "text.xml").is_file()
    assert len(list(kept.glob("step*.xml"))) == 14
    shutil.copytree(kept, tmp_path / folder.name / kept.name)
    with caplog.at_level(logging.INFO, logger="imgsim_embedder.openvino_encoder"):
        again = OpenVinoEncoder.load(
            settings.model_copy(update={"quantization": "int8", "cache_dir": tmp_path})
        )
    assert "int8 towers of" in caplog.text
    assert "quantized" not in caplog.text
    assert "converted" not in caplog.text
    np.testing.assert_allclose(again.encode_images(unseen), int8.encode_images(unseen), atol=1e-6)
    np.testing.assert_allclose(again.encode_texts(TEXTS), int8.encode_texts(TEXTS), atol=1e-6)


def test_int8_needs_openvino(cache: Path) -> None:
    torch_int8 = ModelSettings(
        weights="random", device="cpu", runtime="torch", quantization="int8", cache_dir=cache
    )
    with pytest.raises(ModelLoadError, match="RUNTIME=openvino"):
        load_encoder(torch_int8)
