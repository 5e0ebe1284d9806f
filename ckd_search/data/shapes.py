"""SYNTHETIC Shapes-DVS: procedurally drawn coloured shapes with simulated saccades.

**Synthetic data, not a recording of anything real.** It exists to exercise the RGB -> HSV teacher
path with non-trivial hue and saturation (Digits-DVS is gray). Class = shape (circle, square,
triangle, cross, ring, hexagram); hue, saturation, brightness, background colour, size, position
and a small rotation are drawn independently of the label. Shape and background differ by at
least 0.2 in the simulator's intensity so that every sample produces events. 300 images per class
(1,800), 28x28 RGB, DVS by the same saccade simulator as Digits-DVS on a 34x34 sensor; stratified
80/20 split with ``split_seed``; ``same_image`` pairs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ckd_search.config import DataConfig
from ckd_search.data import digits
from ckd_search.data.built import BuiltData
from ckd_search.data.built import limit_indices
from ckd_search.data.simulator import intensity

NAME = "shapes_dvs"
CLASS_NAMES = ("circle", "square", "triangle", "cross", "ring", "hexagram")
PER_CLASS = 300
SIDE = digits.IMAGE_SIDE
SEED = 12345  # fixes the drawn images; the split uses split_seed
_SUPERSAMPLE = 4  # sub-pixel samples per side for anti-aliased edges
_MIN_CONTRAST = 0.2


def shapes_images() -> tuple[np.ndarray, np.ndarray]:
    """Draw the SYNTHETIC shapes: each shape differs from its background in both intensity
    channels the simulator can read (Y luma, HSV V), so ``simulator.intensity`` changes the events
    only, never the RGB images the teacher learns from.

    Returns:
        (images [1800, 3, 28, 28] uint8, labels [1800] int64).
    """
    from matplotlib.colors import hsv_to_rgb

    rng = np.random.default_rng(SEED)
    n = PER_CLASS * len(CLASS_NAMES)
    labels = np.repeat(np.arange(len(CLASS_NAMES)), PER_CLASS)
    fg = np.empty((n, 3))
    bg = np.empty((n, 3))
    todo = np.arange(n)
    while todo.size:  # redraw colour pairs until shape and background differ in both intensities
        fg_hsv = np.stack(
            [rng.random(todo.size), rng.uniform(0.4, 1, todo.size), rng.uniform(0.3, 1, todo.size)], axis=1
        )
        bg_hsv = np.stack(
            [rng.random(todo.size), rng.uniform(0, 0.7, todo.size), rng.uniform(0, 1, todo.size)], axis=1
        )
        fg[todo], bg[todo] = hsv_to_rgb(fg_hsv), hsv_to_rgb(bg_hsv)
        gap = np.minimum(*(np.abs(_gray(fg[todo], m) - _gray(bg[todo], m)) for m in ("luma", "value")))
        todo = todo[gap < _MIN_CONTRAST]
    radius = rng.uniform(7.0, 11.0, n)
    centre = SIDE / 2 + rng.uniform(-3.0, 3.0, (n, 2))
    angle = np.deg2rad(rng.uniform(-20.0, 20.0, n))
    coverage = _coverage(labels, radius, centre, angle)  # [N, 28, 28] in [0, 1]
    rgb = coverage[:, None] * fg[:, :, None, None] + (1 - coverage[:, None]) * bg[:, :, None, None]
    return np.round(rgb * 255).astype(np.uint8), labels.astype(np.int64)


def build_params(cfg: DataConfig) -> dict[str, Any]:
    return {
        "simulator": dataclasses.asdict(cfg.simulator),
        "split_seed": cfg.split_seed,
        "margin": digits.MARGIN,
        "sim_seed": digits.SIM_SEED,
        "shapes_seed": SEED,
    }


def build_shapes_dvs(cfg: DataConfig, image_size: int) -> BuiltData:
    """Draw, simulate and split the SYNTHETIC shapes (same pipeline as Digits-DVS)."""
    images, labels = shapes_images()
    splits = {}
    for name, idx in zip(("train", "test"), digits.split_indices(labels, cfg.split_seed)):
        idx = idx[limit_indices(labels[idx], cfg.limit)]
        splits[name] = digits.simulate_split(images[idx], labels[idx], idx, cfg, image_size)
    sensor = SIDE + 2 * digits.MARGIN
    info = {
        "source": "SYNTHETIC procedural coloured shapes (not real data), simulated saccades",
        "synthetic_events": True,
        "synthetic_images": True,
        "sensor_size": [sensor, sensor],
    }
    return BuiltData(NAME, CLASS_NAMES, splits["train"], splits["test"], info)


def _gray(rgb: np.ndarray, mode: str) -> np.ndarray:
    return intensity(rgb[:, :, None, None], mode)[:, 0, 0]


def _coverage(labels: np.ndarray, radius: np.ndarray, centre: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Fraction of each pixel inside its sample's shape, from a supersampled inside test."""
    sub = (np.arange(SIDE * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
    out = np.empty((len(labels), SIDE, SIDE))
    for start in range(0, len(labels), 200):  # chunks bound the [B, 112, 112] work arrays
        s = slice(start, start + 200)
        dx = sub[None, None, :] - centre[s, 0, None, None]
        dy = sub[None, :, None] - centre[s, 1, None, None]
        cos, sin = np.cos(angle[s])[:, None, None], np.sin(angle[s])[:, None, None]
        u, v = cos * dx + sin * dy, -sin * dx + cos * dy
        inside = _inside(labels[s, None, None], u, v, radius[s, None, None])
        k = _SUPERSAMPLE
        out[s] = inside.reshape(-1, SIDE, k, SIDE, k).mean(axis=(2, 4))
    return out


def _inside(label: np.ndarray, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    dist = np.hypot(u, v)
    tri_up = _triangle(u, v, r, 0.0)
    shapes = [
        dist < r,                                                              # circle
        np.maximum(np.abs(u), np.abs(v)) < 0.8 * r,                            # square
        tri_up,                                                                # triangle
        ((np.abs(u) < 0.3 * r) & (np.abs(v) < r)) | ((np.abs(v) < 0.3 * r) & (np.abs(u) < r)),
        (dist < r) & (dist > 0.6 * r),                                         # ring
        tri_up | _triangle(u, v, r, np.pi),                                    # hexagram
    ]  # fmt: skip
    out = np.zeros(u.shape, dtype=bool)
    for k, mask in enumerate(shapes):
        out |= mask & (label == k)
    return out


def _triangle(u: np.ndarray, v: np.ndarray, r: np.ndarray, turn: float) -> np.ndarray:
    """Inside an equilateral triangle of circumradius r (three half-planes at the inradius)."""
    inside = np.ones(u.shape, dtype=bool)
    for k in range(3):
        a = turn + np.pi / 2 + k * 2 * np.pi / 3  # outward normal of one side (image y points down)
        inside &= np.cos(a) * u + np.sin(a) * v < r / 2
    return inside
