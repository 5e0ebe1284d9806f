"""Properties of the ESIM-style saccade simulator (data.md 2.3)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ckd_search.config import SimulatorConfig
from ckd_search.data.digits import digits_images
from ckd_search.data.events import EVENT_DTYPE
from ckd_search.data.frames import events_to_frames
from ckd_search.data.simulator import MIN_THRESHOLD
from ckd_search.data.simulator import draw_thresholds
from ckd_search.data.simulator import intensity
from ckd_search.data.simulator import saccade_path
from ckd_search.data.simulator import simulate_saccade_events
from ckd_search.data.simulator import simulate_saccade_frames
from ckd_search.data.simulator import simulate_video_events
from ckd_search.data.simulator import simulate_video_frames

SIM = SimulatorConfig()
images_strategy = arrays(np.float64, (2, 6, 7), elements=st.floats(0, 1))


def digit_like(n: int = 4, seed: int = 0) -> np.ndarray:
    """Smooth blobs on black, like the upsampled digits."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:12, 0:12]
    out = np.zeros((n, 12, 12))
    for i in range(n):
        cy, cx = rng.uniform(3, 9, 2)
        out[i] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(3, 10))
    return out


@settings(max_examples=25, deadline=None)
@given(images=images_strategy, steps=st.integers(1, 30))
def test_static_image_gives_no_events(images: np.ndarray, steps: int) -> None:
    still = np.full((steps + 1, 2), 0.7)
    assert all(len(e) == 0 for e in simulate_saccade_events(images, SIM, path=still))
    assert not simulate_saccade_frames(images, SIM, 4, path=still).any()


@settings(max_examples=40, deadline=None)
@given(
    base=arrays(np.float64, (1, 1, 3, 3), elements=st.floats(0, 1)),
    n=st.integers(0, 6),
    contrast=st.floats(0.05, 0.5),
    eps=st.floats(0.01, 1.0),
    brighter=st.booleans(),
)
def test_brightening_by_exp_nc_gives_n_on_events_per_pixel(
    base: np.ndarray, n: int, contrast: float, eps: float, brighter: bool
) -> None:
    cfg = SimulatorConfig(contrast=contrast, contrast_sigma=0.0, log_eps=eps)
    # log(I1 + eps) - log(I0 + eps) = +-n C exactly: I1 = (I0 + eps) e^{+-nC} - eps
    sign = 1 if brighter else -1
    target = (base + eps) * np.exp(sign * n * contrast) - eps
    if not brighter and (target < 0).any():
        target = np.clip(target, 0, None)  # cannot go below black: the OFF count is then smaller
    video = np.concatenate([base, target], axis=1)
    events = simulate_video_events(video, np.array([0, 1000]), cfg)[0]
    on = np.zeros((3, 3), int)
    off = np.zeros((3, 3), int)
    np.add.at(on, (events["y"][events["p"] == 1], events["x"][events["p"] == 1]), 1)
    np.add.at(off, (events["y"][events["p"] == 0], events["x"][events["p"] == 0]), 1)
    if brighter:
        assert (on == n).all() and not off.any()
    else:
        assert not on.any() and (off <= n).all()
        exact = (base[0, 0] + eps) * np.exp(-n * contrast) - eps >= 0
        assert (off[exact] == n).all()


@settings(max_examples=25, deadline=None)
@given(
    slope=st.floats(-0.07, 0.07).filter(lambda s: abs(s) > 0.01),
    offset=st.floats(0.5, 0.6),
    shift=st.floats(0.5, 3.0),
    steps=st.integers(2, 30),
)
def test_reversing_a_monotone_motion_swaps_on_and_off(
    slope: float, offset: float, shift: float, steps: int
) -> None:
    # a linear ramp moved along x: every pixel's intensity changes monotonically
    ramp = offset + slope * np.arange(-6, 6)
    images = np.broadcast_to(ramp, (1, 6, 12)).copy()
    path = np.stack([np.linspace(0, shift, steps + 1), np.zeros(steps + 1)], axis=1)
    cfg = SimulatorConfig(contrast_sigma=0.0, contrast=0.05)
    fwd = simulate_saccade_frames(images, cfg, 1, margin=0, path=path)[0, 0]
    rev = simulate_saccade_frames(images, cfg, 1, margin=0, path=path[::-1])[0, 0]
    # inner pixels only: the canvas edge brings in black, which is not on the ramp
    inner = np.s_[:, 1:-1, 4:-4]
    np.testing.assert_array_equal(fwd[1][inner[1:]], rev[0][inner[1:]])
    np.testing.assert_array_equal(fwd[0][inner[1:]], rev[1][inner[1:]])


def test_reversing_the_saccades_swaps_on_and_off_totals() -> None:
    # not exact per pixel (the reference level makes the sensor hysteretic), close in total
    images = intensity(digits_images()[0][:64])
    leg = saccade_path(SIM.amplitude, SIM.steps_per_leg)[: SIM.steps_per_leg + 1]
    fwd = simulate_saccade_frames(images, SIM, 1, path=leg).sum(axis=(0, 1, 3, 4))
    rev = simulate_saccade_frames(images, SIM, 1, path=leg[::-1]).sum(axis=(0, 1, 3, 4))
    assert fwd[1] == pytest.approx(rev[0], rel=0.03)
    assert fwd[0] == pytest.approx(rev[1], rel=0.03)


@settings(max_examples=15, deadline=None)
@given(images=images_strategy, duration=st.integers(10, 400_000), legs=st.integers(1, 12))
def test_events_are_sorted_typed_and_inside_the_duration(
    images: np.ndarray, duration: int, legs: int
) -> None:
    cfg = SimulatorConfig(duration_us=duration, steps_per_leg=legs, log_eps=0.05)
    for ev in simulate_saccade_events(images, cfg):
        assert ev.dtype == EVENT_DTYPE
        assert (np.diff(ev["t"]) >= 0).all()
        assert ev["t"].min(initial=0) >= 0 and ev["t"].max(initial=0) <= duration
        assert set(np.unique(ev["p"])) <= {0, 1}
        assert ev["x"].max(initial=0) < 6 + 7 - 1 + 1 and ev["y"].max(initial=0) < 6 + 6


def test_default_saccades_fire_in_every_third_and_both_polarities() -> None:
    frames = simulate_saccade_frames(digit_like(4), SIM, 3)
    per_bin = frames.sum(axis=(3, 4))  # [B, 3, 2]
    assert (per_bin > 0).all()
    path = saccade_path(2.0, 20)
    assert path.shape == (61, 2)
    np.testing.assert_allclose(path[0], path[-1])
    assert np.abs(np.diff(path, axis=0)).max() <= 0.3


def test_same_seed_same_output_and_other_seed_differs() -> None:
    images = digit_like(3)
    a = simulate_saccade_events(images, SIM, seed=7)
    b = simulate_saccade_events(images, SIM, seed=7)
    c = simulate_saccade_events(images, SIM, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))


def test_a_sample_does_not_depend_on_its_batch() -> None:
    images = digit_like(5)
    full = simulate_saccade_events(images, SIM, seed=3, sample_ids=np.arange(5))
    part = simulate_saccade_events(images[[1, 3]], SIM, seed=3, sample_ids=np.array([1, 3]))
    assert np.array_equal(full[1], part[0]) and np.array_equal(full[3], part[1])


@settings(max_examples=20, deadline=None)
@given(
    steps=st.integers(1, 12),
    legs=st.integers(1, 15),
    duration=st.integers(50, 300_000),
    refractory=st.sampled_from([0, 500, 20_000]),
    noise=st.sampled_from([0.0, 20.0]),
    sigma=st.sampled_from([0.0, 0.05]),
)
def test_exact_and_fast_paths_agree_per_bin(
    steps: int, legs: int, duration: int, refractory: int, noise: float, sigma: float
) -> None:
    cfg = SimulatorConfig(
        steps_per_leg=legs,
        duration_us=duration,
        refractory_us=refractory,
        shot_noise_hz=noise,
        contrast_sigma=sigma,
    )
    images = digit_like(3)
    events = simulate_saccade_events(images, cfg, seed=1)
    frames = simulate_saccade_frames(images, cfg, steps, seed=1)
    h, w = frames.shape[-2:]
    for ev, fr in zip(events, frames):
        np.testing.assert_array_equal(events_to_frames(ev, (w, h), steps, t_range=(0, duration)), fr)


def test_video_paths_agree() -> None:
    rng = np.random.default_rng(0)
    video = rng.uniform(0, 1, (2, 9, 5, 5))
    times = np.cumsum(rng.integers(1, 1000, 9)) - 1
    events = simulate_video_events(video, times, SIM)
    frames = simulate_video_frames(video, times, SIM, 4)
    for ev, fr in zip(events, frames):
        assert ev["t"].min() >= times[0] and ev["t"].max() <= times[-1]
        np.testing.assert_array_equal(events_to_frames(ev, (5, 5), 4, t_range=(times[0], times[-1])), fr)


def test_refractory_period_spaces_events_of_a_pixel() -> None:
    cfg = SimulatorConfig(refractory_us=3000, log_eps=0.01)
    plain = simulate_saccade_events(digit_like(2), dataclasses.replace(cfg, refractory_us=0))
    for ev, ev0 in zip(simulate_saccade_events(digit_like(2), cfg), plain):
        assert 0 < len(ev) < len(ev0)
        pix = ev["y"] * 100 + ev["x"]
        order = np.lexsort((ev["t"], pix))
        same = pix[order][1:] == pix[order][:-1]
        assert (np.diff(ev["t"][order])[same] >= 3000).all()


@pytest.mark.parametrize("rate", [50.0, 1000.0])
def test_shot_noise_rate(rate: float) -> None:
    """Also above 1 / dt (200 Hz at 60 steps over 300 ms): a pixel may fire several times a step."""
    cfg = SimulatorConfig(shot_noise_hz=rate)
    still = np.zeros((61, 2))
    events = simulate_saccade_events(np.zeros((4, 10, 10)), cfg, path=still)
    n = sum(len(e) for e in events)
    expected = rate * 0.3 * 4 * 16 * 16  # rate x duration x pixels
    assert n == pytest.approx(expected, rel=0.15)
    assert {0, 1} <= set(np.concatenate([e["p"] for e in events]).tolist())


def test_thresholds_are_clipped_and_drawn_per_sample() -> None:
    cfg = SimulatorConfig(contrast=0.05, contrast_sigma=0.5)
    c_on, c_off = draw_thresholds(cfg, (8, 8), 0, np.array([0, 1, 0]))
    assert c_on.min() >= MIN_THRESHOLD and c_off.min() >= MIN_THRESHOLD
    np.testing.assert_array_equal(c_on[0], c_on[2])
    assert not np.array_equal(c_on[0], c_on[1]) and not np.array_equal(c_on[0], c_off[0])


def test_intensity_modes() -> None:
    rgb = np.zeros((1, 3, 1, 2), np.uint8)
    rgb[0, 2, 0, 0] = 255  # pure blue
    assert intensity(rgb, "luma")[0, 0, 0] == pytest.approx(0.114)
    assert intensity(rgb, "value")[0, 0, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="intensity mode"):
        intensity(rgb, "hue")


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="images must be"):
        simulate_saccade_frames(np.zeros((4, 4)), SIM, 2)
    with pytest.raises(ValueError, match="path must be"):
        simulate_saccade_frames(np.zeros((1, 4, 4)), SIM, 2, path=np.zeros((1, 2)))
    with pytest.raises(ValueError, match="sample_ids"):
        simulate_saccade_frames(np.zeros((2, 4, 4)), SIM, 2, sample_ids=np.arange(3))
    with pytest.raises(ValueError, match=">= 0"):
        simulate_saccade_frames(-np.ones((1, 4, 4)), SIM, 2)
    with pytest.raises(ValueError, match="times_us"):
        simulate_video_events(np.zeros((1, 3, 2, 2)), np.array([0, 5, 5]), SIM)
    with pytest.raises(ValueError, match="video must be"):
        simulate_video_frames(np.zeros((1, 1, 2, 2)), np.array([0]), SIM, 2)


def test_an_amplitude_past_the_margin_is_refused_naming_the_key():
    from ckd_search.errors import UserError

    images = np.full((1, 8, 8), 0.5)
    with pytest.raises(UserError, match=r"data\.simulator\.amplitude=3\.5.*3 px margin"):
        simulate_saccade_frames(images, SimulatorConfig(amplitude=3.5), 2, margin=3)
    assert simulate_saccade_frames(images, SimulatorConfig(amplitude=3.0), 2, margin=3).shape[-1] == 14


def test_shot_noise_of_a_sample_does_not_depend_on_its_batch() -> None:
    """A sample's noise comes from its own generator: alone, in a batch or at another position."""
    cfg = SimulatorConfig(shot_noise_hz=200.0)
    still = np.zeros((61, 2))
    images = np.zeros((3, 10, 10))
    batch = simulate_saccade_events(images, cfg, path=still, seed=4, sample_ids=np.array([7, 8, 9]))
    alone = simulate_saccade_events(images[:1], cfg, path=still, seed=4, sample_ids=np.array([8]))
    np.testing.assert_array_equal(batch[1], alone[0])
    assert len(batch[1]) > 0 and not np.array_equal(batch[0], batch[1])
