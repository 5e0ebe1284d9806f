"""The report's schedule curves are the engine's schedules."""

from __future__ import annotations

import math

import pytest

from ckd_search.analysis.plots import switch_curves
from ckd_search.config import Config
from ckd_search.schedules import Schedules


@pytest.mark.parametrize(
    "values",
    [
        {"kd.e_th": 3.0, "kd.k": 2.0},
        {"kd.schedule": "adaptive", "kd.p_th": 0.3, "kd.k": 20.0},
        {"kd.schedule": "constant", "loss.replace": "step"},
        {"kd.units": "iteration", "kd.k": 0.5},  # e_th: half the run, in iterations
        {"kd.e_th": 2.0, "run.max_epochs": 3, "run.fidelity": "compress"},  # drawn over the planned run
    ],
)
def test_the_curves_step_as_the_engine_does(values):
    flat = {"run.epochs": 8, **values}
    x, gamma, p = switch_curves(flat, iters_per_epoch=5, resolution=5)
    planned = Config.from_dict({**flat, "run.max_epochs": None, "run.fidelity": "truncate"})
    engine = Schedules(planned, 5)
    steps = [(e, it) for e in range(8) for it in range(5)]
    ps = [engine.p_replace(it, e) for e, it in steps]
    gs = [engine.gamma(it, e, engine.p_replace(it, e)) for e, it in steps]
    assert len(x) == 40 and x[5] == 1.0
    assert list(p) == pytest.approx(ps) and list(gamma) == pytest.approx(gs)


def test_keys_a_trial_did_not_set_take_the_engines_defaults():
    x, gamma, _ = switch_curves({"run.epochs": 8, "kd.e_th": math.nan}, resolution=1)
    default = Schedules(Config.from_dict({"run.epochs": 8}), 1)  # k = 100, e_th = 4
    assert list(gamma) == pytest.approx([default.gamma(0, e, 0.0) for e in range(8)])
    assert gamma[3] > 0.99 and gamma[5] < 0.01


def test_no_curve_without_kd_or_for_a_config_that_does_not_validate():
    _, gamma, _ = switch_curves({"run.epochs": 4, "kd.enabled": False}, resolution=2)
    assert list(gamma) == [0.0] * 8
    assert switch_curves({"run.epochs": 4, "kd.k": -1.0}) is None
    assert switch_curves({"run.epochs": 4, "kd.units": "iteration"}) is None  # iterations per epoch unknown
