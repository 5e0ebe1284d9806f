"""The event record shared by readers, simulator and frame binning (tonic-compatible)."""

from __future__ import annotations

import numpy as np

# tonic's xytp layout with int64 fields: t in microseconds, p in {0, 1} (1 = ON).
EVENT_DTYPE = np.dtype([("x", np.int64), ("y", np.int64), ("t", np.int64), ("p", np.int64)])


def make_events(x: np.ndarray, y: np.ndarray, t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Pack equal-length columns into a structured event array.

    Args:
        x, y: [E] pixel coordinates.
        t: [E] timestamps in microseconds.
        p: [E] polarity, 0 = OFF, 1 = ON.

    Returns:
        [E] array of dtype :data:`EVENT_DTYPE`.
    """
    events = np.empty(len(x), dtype=EVENT_DTYPE)
    events["x"], events["y"], events["t"], events["p"] = x, y, t, p
    return events
