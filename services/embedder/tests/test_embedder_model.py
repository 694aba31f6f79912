"""The real open_clip ViT-B-32 with random weights (seed 0): shape, norm, determinism.

Loading takes seconds, so one encoder is shared by the module; these are marked slow.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from embedder_fakes import run_steps

from imgsim_core.images import decode_rgb
from imgsim_core.settings import ImageLimits, ModelSettings
from imgsim_embedder.model import ClipEncoder
from imgsim_embedder.testimages import distinct_images

pytestmark = pytest.mark.slow

SETTINGS = ModelSettings(weights="random", seed=0, device="cpu")


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    return ClipEncoder.load(SETTINGS)


@pytest.fixture(scope="module")
def images(encoder: ClipEncoder) -> torch.Tensor:
    return torch.stack(
        [encoder.preprocess(decode_rgb(data, ImageLimits())) for data, _ in distinct_images(8)]
    )


def test_image_vectors_are_unit_float32_of_dim_512(
    encoder: ClipEncoder, images: torch.Tensor
) -> None:
    vectors = encoder.encode_images(images)
    assert encoder.dim == 512
    assert encoder.model_id == "ViT-B-32/random-seed0"
    assert vectors.shape == (8, 512)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_text_vectors_are_unit_and_distinct(encoder: ClipEncoder) -> None:
    vectors = encoder.encode_texts(["a red car", "a photo of a cat"])
    assert vectors.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert float(vectors[0] @ vectors[1]) < 0.9999


def test_same_seed_gives_the_same_vectors(encoder: ClipEncoder, images: torch.Tensor) -> None:
    again = ClipEncoder.load(SETTINGS)
    np.testing.assert_array_equal(again.encode_images(images), encoder.encode_images(images))


def test_each_image_is_its_own_nearest_alone_or_in_a_batch(
    encoder: ClipEncoder, images: torch.Tensor
) -> None:
    indexed = encoder.encode_images(images)
    queried = np.concatenate([encoder.encode_images(images[i : i + 1]) for i in range(8)])
    sims = queried @ indexed.T
    assert np.diag(sims).min() >= 0.99
    assert (sims.argmax(axis=1) == np.arange(8)).all()


def test_the_stepwise_pass_gives_the_whole_pass_vectors(
    encoder: ClipEncoder, images: torch.Tensor
) -> None:
    # another pass between two steps (a query served first) changes nothing
    stepwise, taken = run_steps(
        encoder.encode_images_in_steps(images), lambda: encoder.encode_images(images[:1])
    )
    assert taken == 13  # the embedding, 12 residual blocks, then the head
    np.testing.assert_array_equal(stepwise, encoder.encode_images(images))


def test_a_stepwise_pass_in_slices_gives_the_same_vectors(
    encoder: ClipEncoder, images: torch.Tensor
) -> None:
    """Blocks run on slices of rows (3 at a time here, so the last slice is short), asked
    before each step: the pass yields once a slice and its vectors are the whole pass's."""
    asked: list[int] = []

    def slice_rows() -> int:
        asked.append(0 if len(asked) % 2 else 3)  # slices, then whole, step by step
        return asked[-1]

    sliced, taken = run_steps(encoder.encode_images_in_steps(images, slice_rows))
    assert len(asked) == 12  # once a residual block
    assert taken == 13 + 6 * 2  # six of the blocks in three slices of the 8 rows
    np.testing.assert_allclose(sliced, encoder.encode_images(images), atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_torch_keeps_one_cpu_thread() -> None:
    """The model runs on the GPU; on the CPU torch only prepares tensors, and its idle
    OpenMP threads would spin beside the preprocessing pool's."""
    threads = torch.get_num_threads()
    try:
        ClipEncoder.load(ModelSettings(weights="random", device="cuda"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
