"""Image intake against pixel bombs: the library and the gateway both refuse them early."""

from __future__ import annotations

import pytest

from imgsim_core.images import ImageError, decode_rgb, inspect_image
from imgsim_core.settings import ImageLimits
from tests.imagegen import png_bomb

LIMITS = ImageLimits()


@pytest.mark.parametrize("side", [10_000, 100_000])
def test_pixel_bombs_are_caught_from_the_header(side: int) -> None:
    with pytest.raises(ImageError) as err:
        inspect_image(png_bomb(side, side), LIMITS)
    assert err.value.code == "too_many_pixels"
    with pytest.raises(ImageError) as err:
        decode_rgb(png_bomb(side, side), LIMITS)
    assert err.value.code == "too_many_pixels"
