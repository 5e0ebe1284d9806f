"""The search's console progress line: counts and the best trial by its latest value."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from ckd_search.search.outcome import EPOCH_KEY
from ckd_search.search.progress import ProgressCallback


def trial(trial_id: str, status: str = "RUNNING") -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, status=status, last_result={})


def report(progress: ProgressCallback, trials: list, t: SimpleNamespace, epoch: int, value: float) -> None:
    progress.on_trial_result(0, trials, t, {"loss": value, EPOCH_KEY: epoch})


def test_a_minimised_metric_ranks_trials_by_their_latest_value_as_the_summary_does():
    progress = ProgressCallback("loss", "min", max_t=None, num_trials=2)
    a, b = trial("x_00000"), trial("x_00001")
    report(progress, [a, b], a, 1, 0.2)  # a's best epoch, later worse: Optuna is told 0.6
    report(progress, [a, b], b, 1, 0.4)
    report(progress, [a, b], a, 2, 0.6)
    assert progress.best == (0.4, "x_00001")
    assert "best loss=0.4000 (x_00001)" in progress.status([a, b])


@pytest.mark.parametrize("mode", ["max", "min"])
def test_ties_go_to_the_lower_trial_id_and_nan_is_no_value(mode):
    progress = ProgressCallback("loss", mode, max_t=None, num_trials=3)
    ts = [trial("x_00002"), trial("x_00000"), trial("x_00001")]
    assert progress.best is None and "| best -]" in progress.status(ts)
    for t in ts:
        report(progress, ts, t, 1, 0.5)
    report(progress, ts, ts[2], 2, float("nan"))  # keeps its 0.5
    assert progress.best == (0.5, "x_00000")


def test_state_round_trips_so_a_resumed_search_keeps_its_best(caplog):
    progress = ProgressCallback("loss", "max", max_t=4, num_trials=2)
    a = trial("x_00000")
    report(progress, [a], a, 1, 0.7)
    a.last_result = {EPOCH_KEY: 4}
    progress.on_trial_complete(0, [a], a)
    resumed = ProgressCallback("loss", "max", max_t=4, num_trials=2)
    resumed.set_state(progress.get_state())
    with caplog.at_level(logging.INFO, logger="ckd_search.search.progress"):
        resumed.on_experiment_end([a])
    assert "1/2 done (0 pruned, 0 failed) | best loss=0.7000 (x_00000)] search ended" in caplog.text


def test_a_state_saved_before_latest_values_were_kept_restores_its_best():
    progress = ProgressCallback("loss", "max", max_t=None, num_trials=2)
    progress.set_state({"outcomes": {}, "best": [0.8, "x_00003"]})
    assert progress.best == (0.8, "x_00003")
