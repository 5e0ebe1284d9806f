"""Colour conversions of the RGB images, as He et al.'s pipeline does them (data.md 5).

- The teacher sees HSV from ``ConvertHSV``: OpenCV's uint8 HSV divided by 255, so H (0-179, degrees
  halved) spans [0, 180/255) while S and V span [0, 1].
- The student's static stream sees V = max(R, G, B) of the image resized to S x S.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ckd_search.data.frames import resize_images

#: OpenCV's uint8 hue is degrees / 2 (0-179); ``ToTensor`` then divides by 255.
HUE_SCALE = 180.0 / 255.0


def rgb_to_hsv(rgb: Tensor) -> Tensor:
    """[..., 3, H, W] RGB in [0, 1] -> HSV scaled as He et al.'s ConvertHSV + ToTensor.

    H in [0, 180/255) (OpenCV's uint8 hue over 255), S and V in [0, 1]; V = max(R, G, B).
    """
    r, g, b = rgb.unbind(-3)
    v, _ = rgb.max(dim=-3)
    c = v - rgb.min(dim=-3).values
    s = torch.where(v > 0, c / v.clamp_min(1e-12), torch.zeros_like(v))
    safe = c.clamp_min(1e-12)
    h = torch.where(v == r, ((g - b) / safe) % 6, torch.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(c > 0, h / 6.0, torch.zeros_like(h)) * HUE_SCALE
    return torch.stack([h, s, v], dim=-3)


def value_channel(rgb_uint8: Tensor) -> Tensor:
    """[N, 3, H, W] uint8 RGB -> [N, 1, H, W] float V = max(R, G, B) / 255."""
    return rgb_uint8.max(dim=1, keepdim=True).values.float() / 255.0


def static_value_maps(rgb_uint8: Tensor, size: int, chunk: int = 512) -> Tensor:
    """The static stream's input: V of each image resized to ``size`` x ``size``.

    He et al. resize the RGB image first (PIL bilinear, which antialiases when it shrinks) and keep
    V of the uint8 result; a plain bilinear shrink from the teacher's 224 to 48 would alias.

    Args:
        rgb_uint8: [N, 3, h, w] uint8 RGB images.
        size: side S of the student's input.
        chunk: images resized at once (bounds the float copy for large image pools).

    Returns:
        [N, 1, S, S] float32 in [0, 1].
    """
    if rgb_uint8.shape[-2:] == (size, size):
        return value_channel(rgb_uint8)
    out = torch.empty(rgb_uint8.shape[0], 1, size, size)
    for start in range(0, rgb_uint8.shape[0], chunk):
        resized = resize_images(rgb_uint8[start : start + chunk].numpy(), size)  # uint8, as PIL's
        out[start : start + len(resized)] = value_channel(torch.from_numpy(resized))
    return out
