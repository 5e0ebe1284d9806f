"""RGB -> HSV on tensors, as He et al.'s ConvertHSV (H rescaled to [0, 1), S and V in [0, 1])."""

from __future__ import annotations

import torch
from torch import Tensor


def rgb_to_hsv(rgb: Tensor) -> Tensor:
    """[..., 3, H, W] RGB in [0, 1] -> HSV in [0, 1]; V = max(R, G, B) (the channel the SNN uses)."""
    r, g, b = rgb.unbind(-3)
    v, _ = rgb.max(dim=-3)
    c = v - rgb.min(dim=-3).values
    s = torch.where(v > 0, c / v.clamp_min(1e-12), torch.zeros_like(v))
    safe = c.clamp_min(1e-12)
    h = torch.where(v == r, ((g - b) / safe) % 6, torch.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(c > 0, h / 6.0, torch.zeros_like(h))
    return torch.stack([h, s, v], dim=-3)


def value_channel(rgb_uint8: Tensor) -> Tensor:
    """[N, 3, H, W] uint8 RGB -> [N, 1, H, W] float V = max(R, G, B) / 255."""
    return rgb_uint8.max(dim=1, keepdim=True).values.float() / 255.0
