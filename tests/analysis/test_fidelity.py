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
    # the statistics, recomputed by hand from the rows
    full = [row["full"] for row in result["rows"]]
    for mode in ("truncate", "compress"):
        low = [row[mode] for row in result["rows"]]
        want = _rank_correlation(low, full)
        got = result["spearman"][mode]["rho"]
        assert got is None if want is None else got == pytest.approx(want), mode
        best_low = max(range(len(low)), key=low.__getitem__)  # the first of equal winners
        assert result["regret"][mode] == pytest.approx(max(full) - full[best_low]), mode
    seed_a, seed_b = ([row["full_seeds"][j] for row in result["rows"]] for j in (0, 1))
    want = _rank_correlation(seed_a, seed_b)
    ceiling = result["seed_ceiling"]
    assert ceiling["pairs"] == (0 if want is None else 1)
    assert ceiling["rho"] is None if want is None else ceiling["rho"] == pytest.approx(want)
    assert "Spearman truncate" in format_table(result)
    again = json.loads(json.dumps(result))  # JSON-ready: the numbers survive the round trip
    assert again["rows"] == result["rows"] and again["spearman"] == result["spearman"]
    assert again["regret"] == result["regret"] and again["seed_ceiling"] == ceiling


def _ranks(values):
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _rank_correlation(a, b):
    """Spearman's rho by hand: Pearson's r of the ranks; None where a side is constant."""
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return None if va == 0 or vb == 0 else cov / (va * vb) ** 0.5


def test_the_hand_made_rank_correlation_agrees_with_known_values():
    assert _ranks([0.3, 0.1, 0.3, 0.2]) == [3.5, 1.0, 3.5, 2.0]
    assert _rank_correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert _rank_correlation([0.5, 0.5, 0.5], [1, 2, 3]) is None
    assert _rank_correlation([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6*2/(4*15)


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
