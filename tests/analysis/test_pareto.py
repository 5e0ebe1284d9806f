"""Pareto fronts without a search: the dominance rule shared by export and analyze, and the report's
Pareto section on a run directory that holds only ``export/trials.parquet`` and ``space.yaml``."""

from __future__ import annotations

import math

import pytest
import yaml

from ckd_search.analysis.pareto import pareto_mask
from ckd_search.analysis.pareto import study_objectives
from ckd_search.analysis.report import build_report
from ckd_search.analysis.results import load_run
from tests.helpers import exported_run


@pytest.mark.parametrize(
    ("points", "modes", "front"),
    [
        # accuracy (max) vs operations (min): the cheap weak and the costly strong trial both count
        ([[0.9, 100.0], [0.5, 10.0], [0.4, 50.0], [0.9, 200.0]], ["max", "min"], [True, True, False, False]),
        ([[1.0, 1.0], [1.0, 1.0], [0.0, 2.0]], ["max", "max"], [True, True, True]),  # equal points
        ([[1.0, 1.0], [1.0, 1.0], [0.5, 0.5]], ["min", "min"], [False, False, True]),
        ([[0.2], [0.7], [0.7]], ["max"], [False, True, True]),  # one objective: the best (ties)
        (
            [[math.nan, 0.0], [None, 0.0], [0.1, 5.0], [0.0, math.inf]],
            ["max", "min"],
            [False, False, True, False],
        ),
        ([], ["max", "min"], []),
    ],
)
def test_pareto_mask(points, modes, front):
    assert pareto_mask(points, modes) == front


def test_study_objectives_read_the_space_file(tmp_path):
    assert study_objectives(tmp_path) == ()
    raw = {"study": {"name": "s", "metric": ["best_test_acc", "sops_per_sample"], "mode": ["max", "min"]}}
    raw.update(searcher="nsga2", space={"kd.k": {"type": "loguniform", "low": 0.1, "high": 10.0}})
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(raw))
    assert study_objectives(tmp_path) == (("best_test_acc", "max"), ("sops_per_sample", "min"))
    raw.update(study={"metric": "train_loss", "mode": "min"}, searcher="tpe")
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(raw))
    assert study_objectives(tmp_path) == (("train_loss", "min"),)
    raw.update(study={"metric": "not_a_metric"})
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(raw))
    assert study_objectives(tmp_path) == ()  # unreadable: treated as unknown, not fatal


def mo_run_dir(tmp_path, multi: bool = True):
    """RUN_DIR with space.yaml and the ``ckd-search export`` table of 6 trials."""
    metric = ["best_test_acc", "sops_per_sample"] if multi else "best_test_acc"
    study = {"name": "mo", "metric": metric, "mode": ["max", "min"] if multi else "max"}
    values = [(0.30, 9e4), (0.25, 3e4), (0.20, 5e4), (0.10, 1e4), (0.28, 9.5e4), (0.35, 2e4)]
    trials = [
        (
            "pruned" if i == 5 else "completed",  # the pruned one would dominate all
            1 if i == 5 else 2,
            {"kd.k": 10.0 ** (i - 2), "kd.e_th": 1.0},
            {"best_test_acc": acc, "sops_per_sample": ops},
        )
        for i, (acc, ops) in enumerate(values)
    ]
    return exported_run(tmp_path, study, "nsga2" if multi else "tpe", trials)


def test_report_pareto_section_from_an_exported_table(tmp_path):
    run = load_run(mo_run_dir(tmp_path), compute_descriptors=False)
    assert run.multi_objective and run.objectives[1] == ("sops_per_sample", "min")
    assert {"final/best_test_acc", "final/sops_per_sample"} <= set(run.trials.columns)
    report = build_report([run], tmp_path / "report")
    assert [p["trial_id"] for p in sorted(report.pareto[run.name], key=lambda p: p["trial_id"])] == [
        "t0",
        "t1",
        "t3",
    ]
    title = f"{run.name}: Pareto front (best_test_acc (max) vs sops_per_sample (min))"
    assert title in report.sections
    md = report.markdown.read_text()
    section = md.split(title, 1)[1].split("\n## ", 1)[0]
    assert f"figures/{run.name}_pareto.png" in section and "3 of 5 complete trial(s)" in section
    assert (tmp_path / "report" / "figures" / f"{run.name}_pareto.png").stat().st_size > 5000


def test_single_objective_report_has_no_pareto_section(tmp_path):
    run = load_run(mo_run_dir(tmp_path, multi=False), compute_descriptors=False)
    assert not run.multi_objective
    report = build_report([run], tmp_path / "report")
    assert report.pareto == {} and not any("Pareto" in s for s in report.sections)
    assert not list((tmp_path / "report" / "figures").glob("*pareto*"))
