"""Embedded Digits-DVS: scikit-learn's 1,797 handwritten digits with simulated N-MNIST saccades.

Real images and labels (UCI optdigits, shipped inside scikit-learn; nothing is downloaded): each
8x8 digit (0..16) is upsampled to 28x28; the "RGB" view is that gray image on three channels
(uint8), and the DVS view is a simulated 3-saccade recording of the same image on a 34x34 sensor
(margin 3, as N-MNIST). Every recording is paired with its own image (``same_image``). The split
is stratified 80/20 (1,437 / 360) with ``split_seed``. See data.md section 0.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ckd_search.config import DataConfig
from ckd_search.data.built import BuiltData
from ckd_search.data.built import SplitArrays
from ckd_search.data.built import limit_indices
from ckd_search.data.frames import resize_frames
from ckd_search.data.frames import resize_images
from ckd_search.data.simulator import intensity
from ckd_search.data.simulator import simulate_saccade_frames

log = logging.getLogger(__name__)

NAME = "digits_dvs"
CLASS_NAMES = tuple(str(d) for d in range(10))
IMAGE_SIDE = 28  # MNIST scale
MARGIN = 3  # 28 + 2 * 3 = 34, the N-MNIST sensor
TEST_FRACTION = 0.2
SIM_SEED = 0  # thresholds of digit i come from (SIM_SEED, i): fixed per image, independent of split


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as 28x28 gray images on three channels.

    Returns:
        (images [1797, 3, 28, 28] uint8, labels [1797] int64).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(digits.images / 16.0).float()[:, None]
    big = F.interpolate(small, size=(IMAGE_SIDE, IMAGE_SIDE), mode="bilinear", align_corners=False)
    gray = (big.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return np.repeat(gray, 3, axis=1), digits.target.astype(np.int64)


def split_indices(labels: np.ndarray, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified 80/20 train/test positions, each sorted ascending."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels, random_state=split_seed
    )
    return np.sort(train), np.sort(test)


def build_params(cfg: DataConfig) -> dict[str, Any]:
    """Parameters (besides T, S, image size, limit) that change the built arrays."""
    return {
        "simulator": dataclasses.asdict(cfg.simulator),
        "split_seed": cfg.split_seed,
        "margin": MARGIN,
        "sim_seed": SIM_SEED,
    }


def build_digits_dvs(cfg: DataConfig, image_size: int) -> BuiltData:
    """Simulate and split Digits-DVS.

    Args:
        cfg: data config (timesteps T, size S, simulator, split_seed, limit).
        image_size: side of the RGB images handed to the teacher.

    Returns:
        The built data set; frames [N, T, 2, S, S] float16, images [N, 3, I, I] uint8.
    """
    images, labels = digits_images()
    splits = {}
    for name, idx in zip(("train", "test"), split_indices(labels, cfg.split_seed)):
        idx = idx[limit_indices(labels[idx], cfg.limit)]
        splits[name] = simulate_split(images[idx], labels[idx], idx, cfg, image_size)
    sensor = IMAGE_SIDE + 2 * MARGIN
    info = {
        "source": "sklearn.datasets.load_digits (UCI optdigits), simulated saccades",
        "synthetic_events": True,
        "synthetic_images": False,
        "sensor_size": [sensor, sensor],
    }
    return BuiltData(NAME, CLASS_NAMES, splits["train"], splits["test"], info)


def simulate_split(
    rgb: np.ndarray, labels: np.ndarray, ids: np.ndarray, cfg: DataConfig, image_size: int
) -> SplitArrays:
    counts = simulate_saccade_frames(
        intensity(rgb, cfg.simulator.intensity),
        cfg.simulator,
        cfg.timesteps,
        margin=MARGIN,
        seed=SIM_SEED,
        sample_ids=ids,
    )
    n = len(labels)
    sensor = IMAGE_SIDE + 2 * MARGIN
    return SplitArrays(
        frames=resize_frames(counts, cfg.size),
        labels=labels.astype(np.int64),
        # the bare image, while the sensor sees it within a margin: as MNIST (28x28) pairs with
        # N-MNIST (34x34) and Caltech101 with N-Caltech101, the two views differ in framing
        images=resize_images(rgb, image_size),
        image_labels=labels.astype(np.int64),
        pair_index=np.arange(n, dtype=np.int64),
        n_events=counts.reshape(n, -1).sum(axis=1).astype(np.int64),
        sensor_hw=np.full((n, 2), sensor, dtype=np.int64),
    )
