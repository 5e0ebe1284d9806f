"""ESIM-style event simulator: a camera making saccades over static images (data.md 2.2-2.3).

Pure NumPy, vectorised over a batch of images. Per pixel the log intensity ``L = log(I + eps)`` is
compared with a reference level ``R``; every time ``L`` moves a whole threshold ``C+`` (``C-``)
past ``R`` an ON (OFF) event fires at the linearly interpolated crossing time and ``R`` moves by
that threshold (Rebecq et al., CoRL 2018; v2e for the per-pixel threshold mismatch).

One crossing step (:func:`_crossings`, :func:`_expand`) feeds two sinks:

* the exact path returns a time-sorted tonic-compatible event list per sample;
* the fast path accumulates the same crossings straight into T time bins -> frames
  ``[B, T, 2, H, W]`` and only computes per-crossing times for steps that straddle a bin edge,
  so both paths give identical per-bin counts.

The motion copies the N-MNIST recordings (Orchard et al. 2015): three straight saccades along a
triangle, ``duration_us`` in total, the image moving on a canvas with ``margin`` pixels on every
side (28x28 digits -> a 34x34 sensor).

Shot noise (``shot_noise_hz``, :func:`shot_noise`) is added on top of the crossings: its events
bypass the refractory filter (they are never dropped by it and do not set a pixel's last-event
time) and do not move the reference level R. v2e's noise events do reset R; here the noise stays
independent of the image, so turning it on never changes the image-driven events.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import numpy as np

from ckd_search.config import SimulatorConfig
from ckd_search.data.events import EVENT_DTYPE
from ckd_search.data.frames import time_bins
from ckd_search.errors import UserError

# Lower clip of the per-pixel thresholds (v2e): keeps a mismatched pixel from firing on noise.
MIN_THRESHOLD = 0.01
# Levels this close (in thresholds) to a crossing count as crossed, so that an exact multiple of C
# is not lost to float rounding.
_TOL = 1e-9
# Samples simulated together: keeps the working arrays (~10 per batch) inside the CPU caches.
_CHUNK = 128
NOISE_STREAM = 1  # third seed word of a sample's shot-noise generator (its thresholds use two)

Levels = Callable[[int], np.ndarray]


# --- inputs --------------------------------------------------------------------------------------
def intensity(rgb: np.ndarray, mode: str = "luma") -> np.ndarray:
    """Gray intensity in [0, 1] of RGB images.

    Args:
        rgb: [B, 3, h, w] uint8 (0..255) or float in [0, 1].
        mode: ``luma`` (ESIM/OpenCV Y = 0.299 R + 0.587 G + 0.114 B) or ``value`` (HSV V = max).

    Returns:
        [B, h, w] float64.
    """
    x = rgb.astype(np.float64) / (255.0 if rgb.dtype == np.uint8 else 1.0)
    if mode == "luma":
        return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    if mode == "value":
        return x.max(axis=1)
    raise ValueError(f"intensity mode must be 'luma' or 'value', got {mode!r}")


def saccade_path(amplitude: float, steps_per_leg: int) -> np.ndarray:
    """Image offset at every render step: three legs of a triangle, recentred on the origin.

    Vertices (0,0) -> (a,a) -> (2a,0) -> (0,0) shifted by (-a, -a/2) so that the image stays
    within ``a`` pixels of the centre.

    Returns:
        [3K + 1, 2] float64 (dx, dy) in pixels, K = ``steps_per_leg``.
    """
    a = float(amplitude)
    vertices = np.array([[0.0, 0.0], [a, a], [2 * a, 0.0], [0.0, 0.0]]) - [a, a / 2]
    frac = np.arange(steps_per_leg) / steps_per_leg
    legs = [v0 + frac[:, None] * (v1 - v0) for v0, v1 in zip(vertices[:-1], vertices[1:])]
    return np.concatenate([*legs, vertices[-1:]], axis=0)


def draw_thresholds(
    cfg: SimulatorConfig, shape: tuple[int, int], seed: int, sample_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel thresholds C+, C- ~ N(contrast, sigma) clipped >= 0.01, one draw per sample.

    Each sample's generator is seeded with ``(seed, sample_id)``, so a sample gets the same
    thresholds whatever batch or subset it is simulated in.

    Returns:
        (c_on, c_off), each [B, H, W] float64.
    """
    out = np.empty((len(sample_ids), 2, *shape))
    for i, sid in enumerate(sample_ids):
        rng = np.random.default_rng((int(seed), int(sid)))
        out[i] = rng.normal(cfg.contrast, cfg.contrast_sigma, size=(2, *shape))
    np.maximum(out, MIN_THRESHOLD, out=out)
    return out[:, 0], out[:, 1]


class _Renderer:
    """Bilinear sub-pixel shifts of a batch of images onto the sensor canvas (zero outside)."""

    def __init__(self, images: np.ndarray, margin: int, max_shift: float) -> None:
        b, h, w = images.shape
        self.height, self.width = h + 2 * margin, w + 2 * margin
        self.margin = margin
        self.pad = margin + math.ceil(max_shift) + 2
        self.padded = np.zeros((b, h + 2 * self.pad, w + 2 * self.pad))
        self.padded[:, self.pad : self.pad + h, self.pad : self.pad + w] = images

    def render(self, dx: float, dy: float) -> np.ndarray:
        """Sensor image [B, H, W] with the image moved by (dx, dy) pixels."""
        # sensor pixel X samples the padded image at X + (pad - margin - dx)
        sx, sy = self.pad - self.margin - dx, self.pad - self.margin - dy
        ix, iy = math.floor(sx), math.floor(sy)
        fx, fy = sx - ix, sy - iy
        h, w, p = self.height, self.width, self.padded
        top = (1 - fx) * p[:, iy : iy + h, ix : ix + w] + fx * p[:, iy : iy + h, ix + 1 : ix + 1 + w]
        if fy == 0:
            return top
        bottom = (1 - fx) * p[:, iy + 1 : iy + 1 + h, ix : ix + w] + fx * p[
            :, iy + 1 : iy + 1 + h, ix + 1 : ix + 1 + w
        ]
        return (1 - fy) * top + fy * bottom


# --- the crossing step (shared by both outputs) -------------------------------------------------
def _crossings(
    level: np.ndarray, ref: np.ndarray, c_on: np.ndarray, c_off: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Number of ON and OFF threshold crossings from reference ``ref`` up to ``level``."""
    diff = level - ref
    n_on = np.floor(np.maximum(diff, 0.0) / c_on + _TOL).astype(np.int64)
    n_off = np.floor(np.maximum(-diff, 0.0) / c_off + _TOL).astype(np.int64)
    return n_on, n_off


def _expand(
    counts: np.ndarray,
    sign: int,
    ref: np.ndarray,
    thresh: np.ndarray,
    prev: np.ndarray,
    level: np.ndarray,
    t0: float,
    t1: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One entry per crossing: flat pixel index, integer time (us) and rank within the step.

    Crossing i of a pixel sits at level ``ref + sign * i * thresh``; its time is interpolated
    linearly between (t0, prev) and (t1, level).
    """
    counts = counts.ravel()
    idx = np.flatnonzero(counts)
    n = counts[idx]
    flat = np.repeat(idx, n)
    rank = np.arange(flat.size) - np.repeat(np.cumsum(n) - n, n) + 1
    lvl = ref.ravel()[flat] + sign * rank * thresh.ravel()[flat]
    lo, hi = prev.ravel()[flat], level.ravel()[flat]
    span = hi - lo
    safe = np.where(span != 0, span, 1.0)
    frac = np.clip(np.where(span != 0, (lvl - lo) / safe, 1.0), 0.0, 1.0)
    t = np.floor(t0 + frac * (t1 - t0)).astype(np.int64)
    return flat, t, rank


def _refractory(
    flat: np.ndarray, t: np.ndarray, rank: np.ndarray, t_last: np.ndarray, period: int
) -> np.ndarray:
    """Keep-mask dropping crossings closer than ``period`` us to the pixel's previous event.

    Greedy in time per pixel: the crossings of one step are visited rank by rank (a pixel has at
    most one crossing per rank), so the loop runs over ranks, not pixels. ``t_last`` is updated.
    """
    keep = np.zeros(flat.size, dtype=bool)
    for r in range(1, int(rank.max(initial=0)) + 1):
        sel = np.flatnonzero(rank == r)
        ok = t[sel] - t_last[flat[sel]] >= period
        keep[sel[ok]] = True
        t_last[flat[sel[ok]]] = t[sel[ok]]
    return keep


# --- sinks ---------------------------------------------------------------------------------------
class _Sink(Protocol):
    def wants_times(self, t0: float, t1: float) -> bool: ...

    def add_counts(self, t1: float, n_on: np.ndarray, n_off: np.ndarray) -> None: ...

    def add_events(self, flat: np.ndarray, t: np.ndarray, p: np.ndarray) -> None: ...


class _EventSink:
    """Collects every event; :meth:`result` splits them per sample, sorted by time."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.shape = shape
        self.chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def wants_times(self, t0: float, t1: float) -> bool:
        return True

    def add_counts(self, t1: float, n_on: np.ndarray, n_off: np.ndarray) -> None:
        raise AssertionError("the event sink always takes events")

    def add_events(self, flat: np.ndarray, t: np.ndarray, p: np.ndarray) -> None:
        if flat.size:
            self.chunks.append((flat, t, p))

    def result(self) -> list[np.ndarray]:
        b, h, w = self.shape
        if not self.chunks:
            return [np.empty(0, dtype=EVENT_DTYPE) for _ in range(b)]
        flat, t, p = (np.concatenate(c) for c in zip(*self.chunks))
        sample, pix = np.divmod(flat, h * w)
        order = np.lexsort((t, sample))  # stable: ties keep generation order
        sample, pix, t, p = sample[order], pix[order], t[order], p[order]
        y, x = np.divmod(pix, w)
        ev = np.empty(flat.size, dtype=EVENT_DTYPE)
        ev["x"], ev["y"], ev["t"], ev["p"] = x, y, t, p
        bounds = np.cumsum(np.bincount(sample, minlength=b))[:-1]
        return np.split(ev, bounds)


class _FrameSink:
    """Accumulates crossings into ``[B, T, 2, H, W]`` bins over ``[t_start, t_end]``."""

    def __init__(self, shape: tuple[int, int, int], n_bins: int, t_start: int, t_end: int) -> None:
        self.shape, self.n_bins, self.t_start, self.t_end = shape, n_bins, t_start, t_end
        b, h, w = shape
        self.frames = np.zeros((b, n_bins, 2, h, w), dtype=np.int32)

    def _bin(self, t: float) -> int:
        return int(time_bins(np.array([math.floor(t)]), self.n_bins, self.t_start, self.t_end)[0])

    def wants_times(self, t0: float, t1: float) -> bool:
        # crossings land in (t0, t1], i.e. integer times in [floor t0, floor t1]
        return self._bin(t0) != self._bin(t1)

    def add_counts(self, t1: float, n_on: np.ndarray, n_off: np.ndarray) -> None:
        k = self._bin(t1)
        self.frames[:, k, 1] += n_on.astype(np.int32)
        self.frames[:, k, 0] += n_off.astype(np.int32)

    def add_events(self, flat: np.ndarray, t: np.ndarray, p: np.ndarray) -> None:
        if not flat.size:
            return
        b, h, w = self.shape
        sample, pix = np.divmod(flat, h * w)
        k = time_bins(t, self.n_bins, self.t_start, self.t_end)
        idx = ((sample * self.n_bins + k) * 2 + p) * (h * w) + pix
        flat_frames = self.frames.reshape(-1)
        if idx.size * 8 < flat_frames.size:  # few events (noise, one bin edge): scatter them
            np.add.at(flat_frames, idx, 1)
        else:
            flat_frames += np.bincount(idx, minlength=flat_frames.size).astype(np.int32)


# --- the simulation loop ------------------------------------------------------------------------
def _simulate(
    levels: Levels,
    times: np.ndarray,
    shape: tuple[int, int, int],
    cfg: SimulatorConfig,
    seed: int,
    sample_ids: np.ndarray,
    sink: _Sink,
) -> None:
    """Run the crossing step over ``len(times) - 1`` render steps and feed ``sink``."""
    b, h, w = shape
    c_on, c_off = draw_thresholds(cfg, (h, w), seed, sample_ids)
    if cfg.shot_noise_hz > 0:  # independent of R and of the refractory filter (module docstring)
        sink.add_events(*shot_noise(cfg.shot_noise_hz, times, (h, w), seed, sample_ids))
    t_last = np.full(b * h * w, np.iinfo(np.int64).min // 2, dtype=np.int64)
    prev = levels(0)
    ref = prev.copy()
    for k in range(1, len(times)):
        level = levels(k)
        t0, t1 = float(times[k - 1]), float(times[k])
        n_on, n_off = _crossings(level, ref, c_on, c_off)
        if cfg.refractory_us > 0 or sink.wants_times(t0, t1):
            on = _expand(n_on, +1, ref, c_on, prev, level, t0, t1)
            off = _expand(n_off, -1, ref, c_off, prev, level, t0, t1)
            flat = np.concatenate([on[0], off[0]])
            t = np.concatenate([on[1], off[1]])
            p = np.concatenate([np.ones(on[0].size, np.int64), np.zeros(off[0].size, np.int64)])
            if cfg.refractory_us > 0:
                keep = _refractory(flat, t, np.concatenate([on[2], off[2]]), t_last, cfg.refractory_us)
                flat, t, p = flat[keep], t[keep], p[keep]
            sink.add_events(flat, t, p)
        else:
            sink.add_counts(t1, n_on, n_off)
        # the reference moves by whole thresholds, also for refractory-suppressed crossings (ESIM)
        ref += n_on * c_on - n_off * c_off
        prev = level


def shot_noise(
    rate_hz: float, times: np.ndarray, shape: tuple[int, int], seed: int, sample_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shot-noise events (data.md 2.3 step 8) of a batch: (flat pixel index in the batch, t, p).

    In each render step [t_k-1, t_k) a pixel fires a Poisson(rate * dt) number of events, each
    with a random polarity at a uniform time in the step, so any rate is honoured (one Bernoulli
    draw per step would cap it at 1 / dt). Sample i draws from its own generator
    ``(seed, sample_ids[i], NOISE_STREAM)``, as its thresholds do, so its noise does not depend on
    the batch or chunk it is simulated in (nor on ``data.limit``).
    """
    h, w = shape
    starts, dt = times[:-1].astype(float), np.diff(times).astype(float)
    mean = (rate_hz * dt * 1e-6)[:, None]
    flat, t, p = [], [], []
    for i, sid in enumerate(sample_ids):
        rng = np.random.default_rng((int(seed), int(sid), NOISE_STREAM))
        counts = rng.poisson(mean, size=(dt.size, h * w))
        step, pix = np.divmod(np.repeat(np.arange(counts.size), counts.ravel()), h * w)
        t.append(np.floor(starts[step] + rng.random(step.size) * dt[step]).astype(np.int64))
        p.append(rng.integers(0, 2, step.size, dtype=np.int64))
        flat.append(i * h * w + pix)
    if not flat:
        return (np.empty(0, np.int64),) * 3
    return np.concatenate(flat), np.concatenate(t), np.concatenate(p)


def _log_levels(frames: Callable[[int], np.ndarray], eps: float) -> Levels:
    return lambda k: np.log(frames(k) + eps)


def _sample_ids(b: int, sample_ids: np.ndarray | None) -> np.ndarray:
    ids = np.arange(b) if sample_ids is None else np.asarray(sample_ids, dtype=np.int64)
    if ids.shape != (b,):
        raise ValueError(f"sample_ids must have shape ({b},), got {ids.shape}")
    return ids


# --- public API ----------------------------------------------------------------------------------
def simulate_video_events(
    video: np.ndarray,
    times_us: np.ndarray,
    cfg: SimulatorConfig,
    *,
    seed: int = 0,
    sample_ids: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Exact events of a batch of intensity videos.

    Args:
        video: [B, K + 1, H, W] intensities in [0, 1].
        times_us: [K + 1] increasing frame times in microseconds.
        cfg: thresholds, log epsilon, refractory period and noise.
        seed: base seed; thresholds of sample i come from ``(seed, sample_ids[i])``.
        sample_ids: [B] stable ids (default 0..B-1).

    Returns:
        B structured arrays of dtype :data:`EVENT_DTYPE`, each sorted by t.
    """
    b, _, h, w = _check_video(video, times_us)
    sink = _EventSink((b, h, w))
    levels = _log_levels(lambda k: video[:, k].astype(np.float64), cfg.log_eps)
    _simulate(levels, np.asarray(times_us, float), (b, h, w), cfg, seed, _sample_ids(b, sample_ids), sink)
    return sink.result()


def simulate_video_frames(
    video: np.ndarray,
    times_us: np.ndarray,
    cfg: SimulatorConfig,
    n_time_bins: int,
    *,
    seed: int = 0,
    sample_ids: np.ndarray | None = None,
) -> np.ndarray:
    """Fast path of :func:`simulate_video_events`: counts in T bins over [times[0], times[-1]].

    Returns:
        [B, T, 2, H, W] int32, polarity 0 = OFF, 1 = ON.
    """
    b, _, h, w = _check_video(video, times_us)
    times = np.asarray(times_us, float)
    sink = _FrameSink((b, h, w), n_time_bins, math.floor(times[0]), math.floor(times[-1]))
    levels = _log_levels(lambda k: video[:, k].astype(np.float64), cfg.log_eps)
    _simulate(levels, times, (b, h, w), cfg, seed, _sample_ids(b, sample_ids), sink)
    return sink.frames


def simulate_saccade_events(
    images: np.ndarray,
    cfg: SimulatorConfig,
    *,
    margin: int = 3,
    seed: int = 0,
    sample_ids: np.ndarray | None = None,
    path: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Exact events of saccades over static images.

    Args:
        images: [B, h, w] intensities in [0, 1] (see :func:`intensity`).
        cfg: simulator parameters (thresholds, eps, motion, duration, refractory, noise).
        margin: canvas border; the sensor is (h + 2 margin) x (w + 2 margin).
        seed, sample_ids: see :func:`simulate_video_events`.
        path: [N + 1, 2] image offsets per render step (default :func:`saccade_path`); the steps
            are spread evenly over ``[0, duration_us]``.

    Returns:
        B event arrays sorted by t, with t in [0, duration_us].
    """
    out: list[np.ndarray] = []
    ids = _sample_ids(len(images), sample_ids)
    for start in range(0, len(images), _CHUNK):
        chunk = slice(start, start + _CHUNK)
        levels, times, shape, _ = _saccade_setup(images[chunk], cfg, margin, path)
        sink = _EventSink(shape)
        _simulate(levels, times, shape, cfg, seed, ids[chunk], sink)
        out.extend(sink.result())
    return out


def simulate_saccade_frames(
    images: np.ndarray,
    cfg: SimulatorConfig,
    n_time_bins: int,
    *,
    margin: int = 3,
    seed: int = 0,
    sample_ids: np.ndarray | None = None,
    path: np.ndarray | None = None,
) -> np.ndarray:
    """Fast path of :func:`simulate_saccade_events`: counts in T bins over [0, duration_us].

    Returns:
        [B, T, 2, H, W] int32 with H = h + 2 margin, W = w + 2 margin.
    """
    _check_images(images)
    b, h, w = images.shape
    frames = np.zeros((b, n_time_bins, 2, h + 2 * margin, w + 2 * margin), dtype=np.int32)
    ids = _sample_ids(b, sample_ids)
    for start in range(0, b, _CHUNK):
        chunk = slice(start, start + _CHUNK)
        levels, times, shape, _ = _saccade_setup(images[chunk], cfg, margin, path)
        sink = _FrameSink(shape, n_time_bins, 0, cfg.duration_us)
        _simulate(levels, times, shape, cfg, seed, ids[chunk], sink)
        frames[chunk] = sink.frames
    return frames


def _check_video(video: np.ndarray, times_us: np.ndarray) -> tuple[int, ...]:
    if video.ndim != 4 or video.shape[1] < 2:
        raise ValueError(f"video must be [B, K + 1, H, W] with K >= 1, got shape {video.shape}")
    if np.shape(times_us) != (video.shape[1],) or (np.diff(times_us) <= 0).any():
        raise ValueError(f"times_us must be {video.shape[1]} increasing times")
    if video.size and video.min() < 0:
        raise ValueError("intensities must be >= 0 (log(I + eps) needs I + eps > 0)")
    return tuple(video.shape)


def _check_images(images: np.ndarray) -> None:
    if images.ndim != 3:
        raise ValueError(f"images must be [B, h, w] intensities, got shape {images.shape}")
    if images.size and images.min() < 0:
        raise ValueError("intensities must be >= 0 (log(I + eps) needs I + eps > 0)")


def _saccade_setup(
    images: np.ndarray, cfg: SimulatorConfig, margin: int, path: np.ndarray | None
) -> tuple[Levels, np.ndarray, tuple[int, int, int], _Renderer]:
    _check_images(images)
    pos = saccade_path(cfg.amplitude, cfg.steps_per_leg) if path is None else np.asarray(path, float)
    if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) < 2:
        raise ValueError(f"path must be [N + 1, 2] offsets with N >= 1, got shape {pos.shape}")
    reach = float(np.abs(pos).max())
    if path is None and reach > margin:
        # the saccade would carry the image off the sensor and its events would be cut silently
        raise UserError(
            f"data.simulator.amplitude={cfg.amplitude}: the saccade moves the image up to "
            f"{reach:g} px, past the sensor's {margin} px margin (use <= {margin})"
        )
    renderer = _Renderer(images.astype(np.float64), margin, reach)
    times = np.linspace(0.0, float(cfg.duration_us), len(pos))
    levels = _log_levels(lambda k: renderer.render(pos[k, 0], pos[k, 1]), cfg.log_eps)
    return levels, times, (len(images), renderer.height, renderer.width), renderer
