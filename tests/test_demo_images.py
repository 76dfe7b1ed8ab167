"""Tests of flair_riva.demo_images: the synthetic pictures of the demo world (the world itself: test_demo)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from flair_riva.demo_images import IMAGE_KINDS, IMAGE_SIZE, _encode, draw_image


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_draw_image_is_seeded_rgb_of_the_requested_size(kind):
    a = draw_image(kind, np.random.default_rng(3))
    assert a.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and a.dtype == np.uint8
    assert np.array_equal(a, draw_image(kind, np.random.default_rng(3)))
    assert not np.array_equal(a, draw_image(kind, np.random.default_rng(4)))
    assert draw_image(kind, np.random.default_rng(3), size=32).shape == (32, 32, 3)


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown image kind 'cat'"):
        draw_image("cat", np.random.default_rng(0))


def test_encode_png_is_lossless_and_jpeg_decodes():
    a = draw_image("person", np.random.default_rng(0))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(_encode(a, "PNG")))), a)
    jpeg = Image.open(io.BytesIO(_encode(a, "JPEG")))
    assert jpeg.format == "JPEG" and jpeg.size == (IMAGE_SIZE, IMAGE_SIZE)
