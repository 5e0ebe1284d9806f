"""Events -> count frames [T, 2, H, W] by time bins, and the resizes applied before caching."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Elements per resize call: bounds the float32 working copy to ~128 MB.
_RESIZE_ELEMENTS = 1 << 25


def time_bins(t: np.ndarray, n_time_bins: int, t_start: int, t_end: int) -> np.ndarray:
    """Bin index of each timestamp for ``n_time_bins`` equal bins over ``[t_start, t_end]``.

    Bins are half-open ``[start, end)`` except the last, which also takes ``t_end`` so that a
    recording's final event is counted. Integer arithmetic keeps the bins exact.

    Args:
        t: [E] int64 timestamps, all inside ``[t_start, t_end]``.
        n_time_bins: T.
        t_start, t_end: the binned interval; ``t_end > t_start``.

    Returns:
        [E] int64 bin indices in ``[0, T)``.
    """
    span = int(t_end) - int(t_start)
    if span <= 0:
        raise ValueError(f"t_end ({t_end}) must be > t_start ({t_start})")
    bins = (np.asarray(t, dtype=np.int64) - int(t_start)) * n_time_bins // span
    return np.minimum(bins, n_time_bins - 1)


def events_to_frames(
    events: np.ndarray,
    sensor_size: tuple[int, int],
    n_time_bins: int,
    *,
    t_range: tuple[int, int] | None = None,
) -> np.ndarray:
    """Count events per (time bin, polarity, pixel).

    With ``t_range=None`` this reproduces ``tonic.transforms.ToFrame(sensor_size, n_time_bins=T)``
    exactly: the window is ``(t_last - t_first) // T`` and events after ``t_first + T * window``
    are dropped, as tonic does (an empty recording, or one shorter than T us, gives zeros). With
    ``t_range=(t0, t1)`` the bins cover that fixed interval instead (see :func:`time_bins`);
    the simulator uses this with ``(0, duration)``.

    Args:
        events: [E] structured array with fields x, y, t, p (p in {0, 1}).
        sensor_size: (W, H); every x < W and y < H.
        n_time_bins: T.
        t_range: optional fixed (t0, t1) interval in microseconds.

    Returns:
        [T, 2, H, W] int32 counts, polarity channel 0 = OFF, 1 = ON.
    """
    width, height = int(sensor_size[0]), int(sensor_size[1])
    frames_shape = (n_time_bins, 2, height, width)
    if len(events) == 0:
        return np.zeros(frames_shape, dtype=np.int32)
    x = events["x"].astype(np.int64, copy=False)
    y = events["y"].astype(np.int64, copy=False)
    t = events["t"].astype(np.int64, copy=False)
    p = events["p"].astype(np.int64, copy=False)
    if x.min() < 0 or y.min() < 0 or x.max() >= width or y.max() >= height:
        raise ValueError(f"events fall outside the sensor size (W, H) = {(width, height)}")
    if not np.isin(p, (0, 1)).all():
        raise ValueError("polarity must be 0 or 1")
    if t_range is None:
        # tonic SliceByTimeBins: integer window from the first/last event, remainder dropped.
        t_first, t_last = int(t.min()), int(t.max())
        window = (t_last - t_first) // n_time_bins
        if window == 0:
            return np.zeros(frames_shape, dtype=np.int32)
        bins = (t - t_first) // window
        keep = bins < n_time_bins
    else:
        t0, t1 = int(t_range[0]), int(t_range[1])
        keep = (t >= t0) & (t <= t1)
        bins = time_bins(np.clip(t, t0, t1), n_time_bins, t0, t1)
    flat = ((bins * 2 + p) * height + y) * width + x
    counts = np.bincount(flat[keep], minlength=n_time_bins * 2 * height * width)
    return counts.astype(np.int32).reshape(frames_shape)


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of a 1-D bilinear resize with ``align_corners=True``.

    ``R_y @ x @ R_x.T`` equals ``F.interpolate(x, mode="bilinear", align_corners=True)`` (the
    interpolation is separable) and runs as two BLAS matmuls, several times faster on a CPU.
    """
    weights = np.zeros((n_out, n_in), dtype=np.float32)
    if n_in == 1 or n_out == 1:
        weights[:, 0] = 1.0
        return weights
    src = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    lo = np.clip(np.floor(src).astype(np.int64), 0, n_in - 2)
    frac = (src - lo).astype(np.float32)
    rows = np.arange(n_out)
    weights[rows, lo] += 1 - frac
    weights[rows, lo + 1] += frac
    return weights


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of count frames to ``size x size`` (``align_corners=True``, as He et al.).

    Args:
        frames: [N, T, 2, H, W] counts (any numeric dtype).
        size: S.

    Returns:
        [N, T, 2, S, S] float16.
    """
    n, steps, pol, height, width = frames.shape
    if (height, width) == (size, size):
        return frames.astype(np.float16)
    rows = torch.from_numpy(bilinear_matrix(height, size))
    cols_t = torch.from_numpy(bilinear_matrix(width, size)).T.contiguous()
    out = np.empty((n, steps, pol, size, size), dtype=np.float16)
    step = max(1, _RESIZE_ELEMENTS // (steps * pol * height * width))
    for start in range(0, n, step):
        chunk = torch.from_numpy(np.ascontiguousarray(frames[start : start + step]))
        resized = rows @ chunk.float() @ cols_t
        out[start : start + len(chunk)] = resized.to(torch.float16).numpy()
    return out


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bilinear resize of uint8 images.

    Args:
        images: [N, 3, h, w] uint8.
        size: output side.

    Returns:
        [N, 3, size, size] uint8.
    """
    if images.shape[-2:] == (size, size):
        return np.ascontiguousarray(images, dtype=np.uint8)
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.round().clamp(0, 255).to(torch.uint8).numpy()
