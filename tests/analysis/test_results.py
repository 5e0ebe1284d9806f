"""The trial table's switch in one unit: phased switches counted in iterations shown in epochs."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from ckd_search import schedules
from ckd_search.analysis.results import switch_in_epochs


def test_an_iteration_switch_is_the_same_curve_in_epochs():
    trials = pd.DataFrame(
        {
            "kd.units": ["epoch", "iteration", "iteration"],
            "kd.e_th": [3.0, 300.0, math.nan],  # the last one: unset, half the run
            "kd.k": [2.0, 0.05, 0.05],
            "run.epochs": [10, 10, 10],
            "optim.batch_size": [10, 10, 10],
        }
    )
    out, note = switch_in_epochs(trials, 1000)  # 1000 samples / 10 per batch
    assert note is not None and "2 trial(s)" in note and "n = 100 iterations per epoch" in note
    assert list(out["kd.e_th"]) == [3.0, 3.0, 5.0] and list(out["kd.k"]) == [2.0, 5.0, 5.0]
    for epoch in range(10):  # gamma at each epoch start is unchanged by the conversion
        iterations = schedules.kd_switch_weight(epoch * 100, 300.0, 0.05)
        assert schedules.kd_switch_weight(epoch, out["kd.e_th"][1], out["kd.k"][1]) == pytest.approx(
            iterations
        )
    assert list(trials["kd.e_th"][:2]) == [3.0, 300.0]  # the input is not changed


def test_without_iterations_per_epoch_those_trials_are_left_out():
    trials = pd.DataFrame({"kd.units": ["epoch", "iteration"], "kd.e_th": [3.0, 300.0], "kd.k": [1.0, 1.0]})
    out, note = switch_in_epochs(trials, None)  # no train_samples descriptor
    assert list(out["kd.e_th"]) == [3.0] and note is not None and "left out" in note
    assert switch_in_epochs(trials[:1], None)[1] is None  # epoch units only: nothing to say


def test_iterations_per_epoch_follow_each_trials_own_batch_size():
    """optim.batch_size searched: n = train_samples // batch size per trial (whole batches only, as
    the training loader drops the last partial one), not the first trial's n for all."""
    trials = pd.DataFrame(
        {
            "kd.units": ["iteration", "iteration"],
            "kd.e_th": [300.0, 300.0],
            "kd.k": [0.05, 0.05],
            "run.epochs": [10, 10],
            "optim.batch_size": [10, 20],
        }
    )
    out, note = switch_in_epochs(trials, 1019)  # 101 and 50 whole batches
    assert list(out["kd.e_th"]) == pytest.approx([300 / 101, 300 / 50])
    assert list(out["kd.k"]) == pytest.approx([0.05 * 101, 0.05 * 50])
    assert note is not None and "n = 50, 101" in note


def test_adaptive_and_constant_trials_are_not_counted_in_iterations():
    """kd.units acts on the phased switch alone: adaptive k is per unit of P_replace, so neither
    converting nor dropping those rows is right, with or without iterations per epoch."""
    trials = pd.DataFrame(
        {
            "kd.schedule": ["phased", "adaptive", "constant"],
            "kd.units": ["iteration"] * 3,
            "kd.e_th": [300.0, math.nan, math.nan],
            "kd.k": [0.05, 3.0, 1.0],
            "run.epochs": [10, 10, 10],
            "optim.batch_size": [10, 10, 10],
        }
    )
    out, note = switch_in_epochs(trials, 1000)
    assert list(out["kd.k"]) == [5.0, 3.0, 1.0] and note is not None and "1 trial(s)" in note
    out, note = switch_in_epochs(trials, None)
    assert list(out["kd.schedule"]) == ["adaptive", "constant"] and "1 trial(s)" in str(note)
    out, note = switch_in_epochs(trials[1:], None)
    assert note is None and out.equals(trials[1:])
