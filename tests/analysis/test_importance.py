"""Importance with conditional parameters: inactive values masked, one ranking per schedule kind."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ckd_search.analysis.importance import compute_importances
from ckd_search.analysis.importance import mask_inactive


def mixed_schedules(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """Phased trials whose accuracy follows e_th, adaptive ones whose accuracy follows p_th; beta is noise.

    Inactive parameters hold the resolved config's defaults (E/2, 0.5), as real trial tables do.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        kind = "phased" if i % 2 == 0 else "adaptive"
        e_th = rng.uniform(1, 11) if kind == "phased" else 6.0
        p_th = rng.uniform(0.1, 0.9) if kind == "adaptive" else 0.5
        beta = rng.uniform(0, 1)
        signal = e_th / 12 if kind == "phased" else p_th
        rows.append(
            {
                "trial_id": f"t{i}",
                "status": "complete",
                "best_test_acc": 0.3 + 0.6 * signal + 0.01 * beta,
                "kd.schedule": kind,
                "kd.e_th": e_th,
                "kd.p_th": p_th,
                "kd.k": 10 ** rng.uniform(-2, 2),
                "loss.beta": beta,
            }
        )
    return pd.DataFrame(rows)


def test_inactive_values_are_masked():
    trials = mixed_schedules(6)
    masked = mask_inactive(trials)
    phased = masked["kd.schedule"] == "phased"
    assert masked.loc[phased, "kd.p_th"].isna().all() and masked.loc[~phased, "kd.e_th"].isna().all()
    assert masked.loc[phased, "kd.e_th"].notna().all() and masked.loc[~phased, "kd.p_th"].notna().all()
    assert trials["kd.p_th"].notna().all()  # the input is not changed


def test_each_schedule_kind_ranks_its_own_switch_parameter_first():
    params = ["kd.schedule", "kd.e_th", "kd.p_th", "kd.k", "loss.beta"]
    imp = compute_importances(mixed_schedules(), params=params)
    assert "kd.e_th" not in imp.params and "kd.p_th" not in imp.params
    assert any("inactive" in note for note in imp.notes)
    assert set(imp.by_group) == {"kd.schedule=phased", "kd.schedule=adaptive"}
    for group, top in (("kd.schedule=phased", "kd.e_th"), ("kd.schedule=adaptive", "kd.p_th")):
        sub = imp.by_group[group]
        assert top in sub.params and "kd.schedule" not in sub.params
        for values in sub.by_method.values():
            assert sum(values.values()) == pytest.approx(1.0)
            assert max(values, key=values.__getitem__) == top, (group, values)


def test_one_schedule_kind_has_no_groups():
    trials = mixed_schedules()
    phased = trials[trials["kd.schedule"] == "phased"]
    imp = compute_importances(phased, params=["kd.e_th", "kd.k", "loss.beta"])
    assert imp.by_group == {} and "kd.e_th" in imp.params
    assert max(imp.by_method["fANOVA"], key=imp.by_method["fANOVA"].__getitem__) == "kd.e_th"


def log_k_trials(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """Accuracy follows log10 k below k = 1 (k log-uniform over [1e-3, 1e2]); beta adds a little.

    On a linear k axis k < 1 is 1 % of the range, and fANOVA (which ignores a ``log`` flag) found
    beta three times as important as k."""
    rng = np.random.default_rng(seed)
    log_k = rng.uniform(-3, 2, n)
    beta = rng.uniform(0, 1, n)
    return pd.DataFrame(
        {
            "trial_id": [f"t{i}" for i in range(n)],
            "status": "complete",
            "best_test_acc": 0.5 + 0.1 * np.minimum(log_k, 0) + 0.05 * beta,
            "kd.k": 10**log_k,
            "loss.beta": beta,
        }
    )


def test_fanova_weighs_a_log_parameter_over_its_decades():
    imp = compute_importances(log_k_trials(), params=["kd.k", "loss.beta"])
    assert imp.by_method["fANOVA"]["kd.k"] > 0.8


def test_conditions_from_the_space_file_group_the_trials(tmp_path):
    """A space whose kd.e_th is drawn only in epoch units: the iteration trials leave it unset."""
    from ckd_search.analysis.space_facts import ENGINE_CONDITIONS
    from ckd_search.analysis.space_facts import SpaceFacts

    rng = np.random.default_rng(1)
    rows = []
    for i in range(40):
        units = "epoch" if i % 2 == 0 else "iteration"
        e_th = rng.uniform(1, 11) if units == "epoch" else np.nan
        rows.append(
            {
                "trial_id": f"t{i}",
                "status": "complete",
                "best_test_acc": 0.3 + (0.05 * e_th if units == "epoch" else 0.2) + 0.001 * i,
                "kd.units": units,
                "kd.schedule": "phased",
                "kd.e_th": e_th,
                "kd.k": 10 ** rng.uniform(-2, 2),
            }
        )
    trials = pd.DataFrame(rows)
    facts = SpaceFacts(conditions={**ENGINE_CONDITIONS, "kd.e_th": (("kd.units", frozenset({"epoch"})),)})
    imp = compute_importances(trials, params=["kd.units", "kd.e_th", "kd.k"], facts=facts)
    epoch = imp.by_group["kd.units=epoch"]
    assert set(imp.by_group) == {"kd.units=epoch"}
    for values in epoch.by_method.values():
        assert max(values, key=values.get) == "kd.e_th"


def test_no_trials_or_a_parameter_constant_among_them_is_a_note_not_a_crash():
    """``analyze`` ranks the table left after iteration-counted trials were dropped, with the
    parameters chosen over all trials: some may be constant there, or no trial left at all."""
    trials = mixed_schedules(12)
    trials["model.bn_statistics"] = ["joint", "per_step"] * 6
    params = ["kd.e_th", "loss.beta", "model.bn_statistics"]
    empty = compute_importances(trials.iloc[:0], params, noise_repeats=0)
    assert not empty.by_method and "no trials left to rank" in empty.notes
    phased = trials[trials["kd.schedule"] == "phased"].assign(**{"model.bn_statistics": "joint"})
    imp = compute_importances(phased, params, noise_repeats=0)
    assert imp.params == ["kd.e_th", "loss.beta"] and set(imp.by_method["fANOVA"]) == {"kd.e_th", "loss.beta"}
