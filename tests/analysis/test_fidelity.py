"""The fidelity study's statistics: Spearman, the seed ceiling, the regret, and a two-seed study."""

from __future__ import annotations

import json

import pytest

from ckd_search.analysis.fidelity import _regret
from ckd_search.analysis.fidelity import fidelity_study
from ckd_search.analysis.fidelity import format_table
from ckd_search.analysis.fidelity import seed_ceiling
from ckd_search.analysis.fidelity import spearman


def test_spearman_is_rank_based_and_none_where_undefined():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 400])["rho"] == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1])["rho"] == pytest.approx(-1.0)
    assert spearman([1, 1, 1, 1], [1, 2, 3, 4])["rho"] is None
    assert spearman([1, 2], [1, 2]) == {"rho": None, "p": None}


def test_seed_ceiling_averages_every_seed_pair():
    # seeds 0 and 1 agree exactly, seed 2 reverses them: pairs (0,1) +1, (0,2) -1, (1,2) -1
    per_config = [[1, 1, 4], [2, 2, 3], [3, 3, 2], [4, 4, 1]]
    ceiling = seed_ceiling(per_config)
    assert ceiling["pairs"] == 3
    assert ceiling["rho"] == pytest.approx(-1 / 3)
    assert seed_ceiling([[0.5], [0.6], [0.7]]) == {"rho": None, "pairs": 0}


def test_regret_is_what_the_low_budget_pick_loses():
    assert _regret([0.1, 0.9, 0.5], [0.8, 0.6, 0.7]) == pytest.approx(0.2)
    assert _regret([0.9, 0.1], [0.8, 0.6]) == 0.0


def test_two_seed_study_averages_and_reports_the_ceiling(tiny):
    base = tiny()
    result = fidelity_study(
        base, n_configs=3, full_epochs=2, low_epochs=1, seed=3, train_seeds=[1, 2], metric="final_test_acc"
    )
    assert result["settings"]["train_seeds"] == [1, 2]
    for row in result["rows"]:
        for mode in ("full", "truncate", "compress"):
            assert len(row[f"{mode}_seeds"]) == 2
            assert row[mode] == pytest.approx(sum(row[f"{mode}_seeds"]) / 2)
    assert result["seed_ceiling"]["pairs"] in (0, 1)
    assert "Spearman truncate" in format_table(result)
    json.dumps(result)


def test_report_section_states_the_seeds_and_the_ceiling(tmp_path):
    from ckd_search.analysis.report import _fidelity_section

    rows = [
        {"params": {"kd.e_th": e, "kd.k": 1.0, "loss.beta": 0.5}, "full": f, "truncate": t, "compress": c}
        for e, f, t, c in ((1.0, 0.5, 0.2, 0.3), (2.0, 0.6, 0.3, 0.2), (3.0, 0.7, 0.4, 0.4))
    ]
    fid = {
        "settings": {"full_epochs": 4, "low_epochs": 1, "train_seeds": [1, 2]},
        "rows": rows,
        "spearman": {"truncate": {"rho": 1.0, "p": 0.0}, "compress": {"rho": 0.5, "p": 0.67}},
        "regret": {"truncate": 0.0, "compress": 0.1},
        "seed_ceiling": {"rho": 0.25, "pairs": 1},
    }
    text = " ".join(_fidelity_section(fid, tmp_path / "f.png").text)
    assert "training seeds 1, 2" in text and "+0.250" in text
    fid["settings"]["train_seeds"] = [1]
    assert "ceiling" not in " ".join(_fidelity_section(fid, tmp_path / "g.png").text)
