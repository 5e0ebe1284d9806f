"""Colour conversions as He et al.'s pipeline does them (data.md 5)."""

from __future__ import annotations

import colorsys

import torch
import torch.nn.functional as F

from ckd_search.color import HUE_SCALE
from ckd_search.color import rgb_to_hsv
from ckd_search.color import static_value_maps
from ckd_search.color import value_channel


def test_hsv_matches_opencv_uint8_scaling():
    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand(3, 4, 5, generator=gen)
    hsv = rgb_to_hsv(rgb)
    for y in range(4):
        for x in range(5):
            h, s, v = colorsys.rgb_to_hsv(*rgb[:, y, x].tolist())
            # OpenCV's uint8 hue is degrees / 2 (0-179) and ToTensor divides by 255
            expected = (h * 360 / 2 / 255, s, v)
            assert torch.allclose(hsv[:, y, x], torch.tensor(expected), atol=1e-5)
    assert float(hsv[0].max()) < HUE_SCALE


def test_static_maps_are_the_value_channel_at_the_input_size():
    img = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(static_value_maps(img, 8), value_channel(img))
    assert static_value_maps(img, 4).shape == (2, 1, 4, 4)


def test_static_maps_do_not_alias_when_they_shrink():
    # 1-pixel stripes shrunk 7x: an antialiased resize (PIL, He et al.) averages them to grey, a plain
    # bilinear one samples single stripes and keeps a strong pattern
    stripes = torch.zeros(1, 3, 56, 56, dtype=torch.uint8)
    stripes[..., ::2] = 255
    maps = static_value_maps(stripes, 8)
    assert float(maps.std()) < 0.02 and abs(float(maps.mean()) - 0.5) < 0.05
    plain = F.interpolate(value_channel(stripes), size=(8, 8), mode="bilinear", align_corners=False)
    assert float(plain.std()) > 0.2  # what the old code fed the static stream


def test_static_maps_are_chunk_invariant():
    img = torch.randint(0, 256, (5, 3, 12, 12), dtype=torch.uint8)
    assert torch.equal(static_value_maps(img, 5, chunk=2), static_value_maps(img, 5, chunk=64))
