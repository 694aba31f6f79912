"""The one image-id rule."""

from __future__ import annotations

import pytest

from imgsim_core.ids import ImageIdError, check_image_id


@pytest.mark.parametrize(
    "image_id",
    ["a", "cats/1.jpg", "photos/ä.jpg", "with space", "x" * 256, "/abs/path/a.jpg", "a..b",
     ".hidden", "a/.b/c", "100%", "q?x#y"],
)  # fmt: skip
def test_good_ids(image_id: str) -> None:
    assert check_image_id(image_id) == image_id


@pytest.mark.parametrize(
    "image_id",
    ["", "x" * 257, "a\nb", "a\x7fb", "a\u00a0b", "a\u200bb", "a\u202eb", "a\u0085b",
     "a/../b", "..", ".", "a/./b", "a//b", "a/", "//a", "../a", "a/.."],
)  # fmt: skip
def test_bad_ids(image_id: str) -> None:
    with pytest.raises(ImageIdError):
        check_image_id(image_id)
