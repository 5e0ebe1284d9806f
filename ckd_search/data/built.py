"""NumPy form of a built data set: what the builders return and the cache stores per split."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from typing import Any

import numpy as np
import torch

from ckd_search.data.base import Split

# Column order of a split on disk; the content hash follows this order.
COLUMNS = ("frames", "labels", "images", "image_labels", "pair_index", "n_events", "sensor_hw")


@dataclass
class SplitArrays:
    """One split as NumPy arrays.

    Attributes:
        frames: [N, T, 2, S, S] float16 event counts per time bin (0 = OFF, 1 = ON), resized.
        labels: [N] int64.
        images: [M, 3, I, I] uint8 RGB.
        image_labels: [M] int64.
        pair_index: [N] int64 index into ``images`` of each recording's own image.
        n_events: [N] int64 events in each raw recording (before binning and resizing).
        sensor_hw: [N, 2] int64 (H, W) of each recording's sensor window before resizing.
    """

    frames: np.ndarray
    labels: np.ndarray
    images: np.ndarray
    image_labels: np.ndarray
    pair_index: np.ndarray
    n_events: np.ndarray
    sensor_hw: np.ndarray

    def __post_init__(self) -> None:
        n, m = len(self.frames), len(self.images)
        for name in ("labels", "pair_index", "n_events", "sensor_hw"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} must have {n} rows (one per recording)")
        if len(self.image_labels) != m:
            raise ValueError(f"image_labels must have {m} rows (one per image)")

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in COLUMNS}

    def to_split(self) -> Split:
        """CPU tensors sharing memory with these arrays (no copy)."""
        return Split(
            frames=torch.from_numpy(self.frames),
            labels=torch.from_numpy(self.labels),
            images=torch.from_numpy(self.images),
            image_labels=torch.from_numpy(self.image_labels),
            pair_index=torch.from_numpy(self.pair_index),
        )


@dataclass
class BuiltData:
    """A built data set: class names, both splits and facts for the descriptors."""

    name: str
    class_names: tuple[str, ...]
    train: SplitArrays
    test: SplitArrays
    info: dict[str, Any] = field(default_factory=dict)


def limit_indices(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """At most ``limit`` positions, taken round-robin over classes, returned in ascending order.

    Round-robin (the first sample of every class, then the second, ...) keeps a capped split
    class-balanced even when the split is sorted by class (N-Caltech101, CEP-DVS).

    Args:
        labels: [N] int64.
        limit: cap, or None for all.

    Returns:
        [min(N, limit)] int64 positions into ``labels``.
    """
    n = len(labels)
    if limit is None or limit >= n:
        return np.arange(n)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - group_start
    chosen = np.lexsort((np.arange(n), rank))[:limit]
    return np.sort(chosen)
