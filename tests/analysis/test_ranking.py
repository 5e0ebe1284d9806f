"""The report ranks trials by the study's own metric, as the searcher and ``ckd-search export`` do."""

from __future__ import annotations

import json

import pytest

from ckd_search.analysis.importance import build_study
from ckd_search.analysis.report import build_report
from ckd_search.analysis.results import ACCURACY
from ckd_search.analysis.results import Ranking
from ckd_search.analysis.results import load_run
from ckd_search.analysis.results import ranking_for
from tests.helpers import exported_run

# (best test top-1, train loss at the last epoch): the most accurate trial is not the lowest-loss one.
VALUES = [(0.90, 0.80), (0.60, 0.10), (0.75, 0.40), (0.50, 0.95)]


def loss_run_dir(tmp_path, metric: str = "train_loss", mode: str = "min"):
    """RUN_DIR of a single-objective study on ``metric``: space.yaml and the exported table."""
    trials = [
        ("completed", 2, {"kd.k": 10.0**i, "kd.e_th": 0.5 + i}, {"best_test_acc": acc, "train_loss": loss})
        for i, (acc, loss) in enumerate(VALUES)
    ]
    return exported_run(tmp_path, {"name": "loss", "metric": metric, "mode": mode}, "tpe", trials)


@pytest.mark.parametrize(
    ("objectives", "expected"),
    [
        ((), ACCURACY),
        ((("best_test_acc", "max"),), ACCURACY),
        ((("train_loss", "min"),), Ranking("final/train_loss", "min", "train_loss at the last epoch (min)")),
        ((("test_acc", "max"),), Ranking("final/test_acc", "max", "test_acc at the last epoch (max)")),
        ((("best_test_acc", "max"), ("sops_per_sample", "min")), ACCURACY),  # Pareto section instead
    ],
)
def test_ranking_follows_a_single_objective(objectives, expected):
    assert ranking_for(objectives) == expected


def test_best_index_respects_the_direction():
    values = [0.3, float("nan"), 0.1, 0.7]
    assert ACCURACY.best_index(values) == 3
    assert Ranking("x", "min").best_index(values) == 2
    assert Ranking("x", "min").best_index([float("nan")] * 2) == 0


def test_a_loss_study_is_reported_lowest_loss_first(tmp_path):
    run = load_run(loss_run_dir(tmp_path), compute_descriptors=False)
    assert run.ranking.column == "final/train_loss"
    assert list(run.ranked()["trial_id"]) == ["t1", "t2", "t0", "t3"]
    report = build_report([run], tmp_path / "report")
    summary = json.loads(report.summary.read_text())["runs"][run.name]
    assert [row["trial_id"] for row in summary["best"]] == ["t1", "t2", "t0", "t3"]
    md = report.markdown.read_text()
    assert "best train_loss at the last epoch (min)" in md  # the overview names what "best" means
    assert "its best test top-1" in md


def test_an_accuracy_study_keeps_best_test_top1(tmp_path):
    run = load_run(loss_run_dir(tmp_path, "best_test_acc", "max"), compute_descriptors=False)
    assert run.ranking == ACCURACY
    assert list(run.ranked()["trial_id"]) == ["t0", "t2", "t1", "t3"]


def test_importance_study_minimises_a_metric_to_minimise(tmp_path):
    run = load_run(loss_run_dir(tmp_path), compute_descriptors=False)
    study = build_study(run.trials, ["kd.k", "kd.e_th"], ranking=run.ranking)
    assert study.direction.name == "MINIMIZE"
    assert study.best_trial.user_attrs["trial_id"] == "t1"
    assert build_study(run.trials, ["kd.k"]).best_trial.user_attrs["trial_id"] == "t0"


@pytest.mark.parametrize("mode", ["max", "min"])
def test_tied_trials_rank_by_the_lower_trial_id(mode):
    import pandas as pd

    from ckd_search.analysis.results import rank_trials

    ids = [f"t{i}" for i in (3, 0, 2, 1)]
    trials = pd.DataFrame({"trial_id": ids, "status": "complete", "m": [0.5, 0.5, 0.9, 0.5]})
    ranked = list(rank_trials(trials, ranking=Ranking("m", mode))["trial_id"])
    ties = ["t0", "t1", "t3"]
    assert ranked == (["t2", *ties] if mode == "max" else [*ties, "t2"])
