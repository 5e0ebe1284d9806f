"""Events -> frames: equivalence with tonic's ToFrame, fixed-range bins, resizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from ckd_search.data.events import make_events
from ckd_search.data.frames import bilinear_matrix
from ckd_search.data.frames import events_to_frames
from ckd_search.data.frames import resize_frames
from ckd_search.data.frames import resize_images
from ckd_search.data.frames import time_bins


def random_events(seed: int, n: int, w: int, h: int, t_max: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, t_max, n))
    return make_events(rng.integers(0, w, n), rng.integers(0, h, n), t, rng.integers(0, 2, n))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 3000),
    steps=st.integers(1, 16),
    t_max=st.sampled_from([5, 1000, 300_000]),
)
def test_matches_tonic_to_frame(seed: int, n: int, steps: int, t_max: int) -> None:
    import tonic

    ev = random_events(seed, n, 23, 17, t_max)
    ours = events_to_frames(ev, (23, 17), steps)
    theirs = tonic.transforms.ToFrame(sensor_size=(23, 17, 2), n_time_bins=steps)(ev.copy())
    assert ours.shape == (steps, 2, 17, 23)
    np.testing.assert_array_equal(ours, theirs)


def test_empty_events_give_zero_frames() -> None:
    ev = make_events(*(np.zeros(0, np.int64),) * 4)
    assert events_to_frames(ev, (4, 3), 5).shape == (5, 2, 3, 4)
    assert not events_to_frames(ev, (4, 3), 5).any()


def test_fixed_range_keeps_every_event_and_puts_the_end_in_the_last_bin() -> None:
    ev = make_events(np.array([0, 1, 2, 3]), np.zeros(4, int), np.array([0, 99, 100, 300]), np.ones(4, int))
    frames = events_to_frames(ev, (4, 1), 3, t_range=(0, 300))
    assert frames.sum() == 4
    np.testing.assert_array_equal(frames[:, 1, 0].nonzero()[0], [0, 0, 1, 2])
    np.testing.assert_array_equal(
        time_bins(np.array([0, 99, 100, 199, 200, 300]), 3, 0, 300), [0, 0, 1, 1, 2, 2]
    )


def test_events_outside_the_sensor_are_rejected() -> None:
    ev = make_events(np.array([5]), np.array([0]), np.array([0]), np.array([1]))
    with pytest.raises(ValueError, match="outside the sensor"):
        events_to_frames(ev, (5, 5), 2)
    bad_p = make_events(np.array([0]), np.array([0]), np.array([0]), np.array([-1]))
    with pytest.raises(ValueError, match="polarity"):
        events_to_frames(bad_p, (5, 5), 2)


@pytest.mark.parametrize(("h", "w", "size"), [(34, 34, 32), (180, 240, 48), (10, 7, 48), (5, 5, 5)])
def test_resize_frames_matches_interpolate(h: int, w: int, size: int) -> None:
    x = np.random.default_rng(0).poisson(2.0, (3, 4, 2, h, w)).astype(np.int32)
    ours = resize_frames(x, size)
    ref = F.interpolate(
        torch.from_numpy(x).float().reshape(3, 8, h, w),
        size=(size, size),
        mode="bilinear",
        align_corners=True,
    ).reshape(3, 4, 2, size, size)
    assert ours.dtype == np.float16 and ours.shape == (3, 4, 2, size, size)
    np.testing.assert_allclose(ours.astype(np.float32), ref.numpy(), rtol=2e-3, atol=2e-3)


def test_bilinear_matrix_rows_sum_to_one() -> None:
    for n_in, n_out in [(1, 4), (4, 1), (34, 32), (7, 48)]:
        np.testing.assert_allclose(bilinear_matrix(n_in, n_out).sum(axis=1), 1.0, rtol=1e-6)


def test_resize_images_shape_and_identity() -> None:
    img = np.random.default_rng(1).integers(0, 256, (2, 3, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(resize_images(img, 28), img)
    out = resize_images(img, 48)
    assert out.shape == (2, 3, 48, 48) and out.dtype == np.uint8
