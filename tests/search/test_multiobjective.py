"""One real multi-objective search through the CLI, checked end to end.

NSGA-II over best test accuracy (max) vs synaptic operations per sample (min), the KD schedule
(phased or adaptive, each with its own switch point) among the parameters. ``ckd-search export``
must write exactly the Pareto front (checked against the Optuna journal) and read the epoch ledger
where ``result.json`` lost epochs; ``ckd-search analyze`` must write every report section, the
Pareto front and the (p_th, log10 k) plane included, computing missing data-set descriptors. One
search serves all of these: a search costs most of a minute on two shared cores.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from ckd_search.analysis.descriptors import FILE_NAME as DESCRIPTORS
from ckd_search.analysis.results import load_run
from ckd_search.cli import main
from ckd_search.search.ledger import LEDGER_FILE
from ckd_search.search.settings import SearchSettings

pytestmark = pytest.mark.slow
OBJECTIVES = (("best_test_acc", "max"), ("sops_per_sample", "min"))
NUM_TRIALS = 8
LABEL = "digits_dvs"  # the report's name for the run (its data set)
#: Report sections (after "<label>: ") and figure files (after "<label>_") of this search.
SECTIONS = (
    "hyperparameter importance",
    "best test top-1 over the (e_th, log10 k) plane",
    "best test top-1 over the (p_th, log10 k) plane",
    "Pareto front (best_test_acc (max) vs sops_per_sample (min))",
    "KD switch gamma(e) and P_replace",
    "learning curves",
    "parallel coordinates",
    "schedule kinds (phased vs adaptive)",
)
FIGURES = ("importance", "plane", "plane_adaptive", "pareto", "switch", "curves", "parallel", "kinds")


@pytest.fixture(scope="module")
def mo_run(tmp_path_factory: pytest.TempPathFactory, tiny_fixed: dict[str, Any]) -> Path:
    """RUN_DIR of a finished 8-trial NSGA-II search (2 epochs each; lr and width searched so both
    objectives vary) run by ``ckd-search search --gpus 0`` on ``ray.init(num_cpus=2)``."""
    import ray

    tmp = tmp_path_factory.mktemp("mo")
    fixed = {k: v for k, v in tiny_fixed.items() if k != "model.width"}
    raw = {
        "study": {
            "name": "mo",
            "metric": [m for m, _ in OBJECTIVES],
            "mode": [d for _, d in OBJECTIVES],
            "num_trials": NUM_TRIALS,
            "seed": 0,
        },
        "fixed": {**fixed, "optim.batch_size": 16},
        "space": {
            "optim.lr": {"type": "loguniform", "low": 2.0e-3, "high": 3.0e-2},
            "model.width": {"type": "choice", "values": [0.0625, 0.125]},
            "kd.schedule": {"type": "choice", "values": ["phased", "adaptive"]},
            "kd.e_th": {"type": "uniform", "low": 0.0, "high": 2.0, "condition": {"kd.schedule": "phased"}},
            "kd.p_th": {"type": "uniform", "low": 0.1, "high": 0.9, "condition": {"kd.schedule": "adaptive"}},
            "kd.k": {"type": "loguniform", "low": 0.1, "high": 100.0},
        },
        "scheduler": "none",
        "searcher": {"type": "nsga2", "population_size": 4},
        "resources": {"cpu": 1, "gpu": 0},
    }
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump(raw, sort_keys=False))
    run = tmp / "run"
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="WARNING")
    try:
        assert main(["search", "--space", str(space), "--gpus", "0", "--out", str(run)]) == 0
    finally:
        ray.shutdown()
    return run


def load_study(run: Path) -> Any:
    import optuna

    from ckd_search.search.optuna_search import journal_storage

    settings = SearchSettings.load(run)
    return optuna.load_study(study_name=settings.study_name, storage=journal_storage(settings.journal_path))


def told_values(run: Path) -> dict[str, list[float]]:
    """Ray trial id -> objective values of every COMPLETE trial, as the Optuna journal holds them."""
    from optuna.trial import TrialState

    from ckd_search.search.optuna_search import RAY_TRIAL_ATTR

    trials = load_study(run).get_trials(states=(TrialState.COMPLETE,))
    return {t.user_attrs[RAY_TRIAL_ATTR]: list(t.values) for t in trials}


def optuna_front(run: Path) -> set[str]:
    from ckd_search.search.optuna_search import RAY_TRIAL_ATTR

    return {t.user_attrs[RAY_TRIAL_ATTR] for t in load_study(run).best_trials}


def better_or_equal(a: list[float], b: list[float]) -> list[bool]:
    return [x >= y if mode == "max" else x <= y for x, y, (_, mode) in zip(a, b, OBJECTIVES)]


def dominated_by(a: list[float], b: list[float]) -> bool:
    """``b`` dominates ``a``: at least as good in every objective, strictly better in one."""
    return all(better_or_equal(b, a)) and not all(better_or_equal(a, b))


def test_every_trial_finishes_with_both_objectives(mo_run):
    values = told_values(mo_run)
    assert len(values) == NUM_TRIALS
    assert all(len(v) == 2 and all(math.isfinite(x) for x in v) for v in values.values())
    assert len({round(v[1]) for v in values.values()}) > 1, "sops_per_sample does not vary"
    trials = load_run(mo_run, compute_descriptors=False).trials
    assert set(trials["kd.schedule"]) == {"phased", "adaptive"}
    adaptive = trials[trials["kd.schedule"] == "adaptive"]
    assert adaptive["kd.p_th"].between(0.1, 0.9).all()


# --- export: the Pareto front --------------------------------------------------------------------
def test_export_writes_exactly_the_pareto_front(mo_run, tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "export"
    assert main(["export", str(mo_run), "--top", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "pareto.json").read_text())
    assert doc["metrics"] == [m for m, _ in OBJECTIVES] and doc["modes"] == [d for _, d in OBJECTIVES]
    exported = {p["trial_id"]: [p["values"][m] for m, _ in OBJECTIVES] for p in doc["front"]}
    assert exported and len(exported) == len(doc["front"])
    finished = told_values(mo_run)  # the independent reference: what the searcher was told
    assert doc["completed"] == len(finished)
    for trial_id, point in exported.items():
        assert point == pytest.approx(finished[trial_id], rel=1e-9)
        dominators = [o for o, other in finished.items() if dominated_by(point, other)]
        assert not dominators, f"exported trial {trial_id} {point} is dominated by {dominators}"
    for trial_id, point in finished.items():
        if not any(dominated_by(point, other) for other in finished.values()):
            assert trial_id in exported, f"non-dominated trial {trial_id} {point} is missing from the export"
    assert set(exported) == optuna_front(mo_run)  # and Optuna's own front agrees
    for point in doc["front"]:
        assert point["config"]["model.width"] in (0.0625, 0.125) and "optim.lr" in point["config"]
        assert f"trial {point['trial_id']}" in printed
    table = pd.read_parquet(out / "trials.parquet")
    assert set(table.loc[table["pareto"], "trial_id"]) == set(exported)
    best = json.loads((out / "export.json").read_text())["best"]
    assert best[0]["trial_id"] in exported  # the front ranks first
    assert "Pareto front:" in printed


# --- analyze: every section ------------------------------------------------------------------------
def test_analyze_report_has_every_section_and_figure(mo_run, tmp_path):
    (mo_run / DESCRIPTORS).unlink(missing_ok=True)  # analyze must compute them
    assert load_run(mo_run, compute_descriptors=False).descriptors == {}
    out = tmp_path / "report"
    assert main(["analyze", str(mo_run), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for title in SECTIONS:
        assert f"{LABEL}: {title}" in md and f"{LABEL}: {title}" in html, title
    for title in ("Best configs", "Data sets: descriptors and best switch"):
        assert title in md and title in html, title
    figures = {p.name for p in (out / "figures").glob("*.png")}
    assert figures == {f"{LABEL}_{name}.png" for name in FIGURES}
    for name in figures:
        assert f"figures/{name}" in md and (out / "figures" / name).stat().st_size > 5000
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(images) == len(FIGURES)  # every figure inlined
    pareto = md.split(f"{LABEL}: {SECTIONS[3]}", 1)[1].split("\n### ", 1)[0]
    assert "Pareto-optimal trials" in pareto and f"figures/{LABEL}_pareto.png" in pareto

    summary = json.loads((out / "summary.json").read_text())["runs"][LABEL]
    assert set(summary["importance"]) == {"PED-ANOVA", "fANOVA"}
    for values in summary["importance"].values():
        assert math.isclose(sum(values.values()), 1.0, abs_tol=1e-6)
    assert {p["trial_id"] for p in summary["pareto"]} == optuna_front(mo_run)
    trials = load_run(mo_run, compute_descriptors=False).trials
    adaptive = trials[(trials["kd.schedule"] == "adaptive") & (trials["status"] == "complete")]
    best = adaptive.sort_values("best_test_acc", ascending=False).iloc[0]
    assert summary["best_adaptive"]["best_test_acc"] == pytest.approx(best["best_test_acc"])
    kinds = {row["schedule"]: row for row in summary["schedule_kinds"]}
    assert set(kinds) == {"phased", "adaptive"}
    assert kinds["adaptive"]["trials"] == int((trials["kd.schedule"] == "adaptive").sum())

    # descriptors: computed from the best trial's config, shown in the data-set table, saved
    table = md.split("## Data sets: descriptors and best switch", 1)[1]
    assert "cka_rgb_dvs" in table and "mean_events_per_sample" in table and "Computed by analyze" in table
    saved = json.loads((mo_run / DESCRIPTORS).read_text())
    assert saved["classes"] == 10 and saved["timesteps"] == 2 and saved["size"] == 16
    assert 0.0 <= saved["cka_rgb_dvs"] <= 1.0 and saved["mean_events_per_sample"] > 0
    saved["classes"] = 99  # an existing file is read, not recomputed
    (mo_run / DESCRIPTORS).write_text(json.dumps(saved))
    assert load_run(mo_run).descriptors["classes"] == 99


# --- export: the epoch ledger --------------------------------------------------------------------
@pytest.fixture
def run_copy(mo_run: Path, tmp_path: Path) -> Path:
    """A copy of the finished search to damage (checkpoints left out)."""
    target = tmp_path / "run"
    shutil.copytree(mo_run, target, ignore=shutil.ignore_patterns("checkpoint_*", "mlartifacts", "export"))
    return target


def export_rows(run: Path, out: Path) -> dict[str, dict[str, Any]]:
    import pandas as pd

    assert main(["export", str(run), "--top", "1", "--out", str(out)]) == 0
    return {r["trial_id"]: r for r in pd.read_parquet(out / "trials.parquet").to_dict("records")}


def result_files(run: Path) -> dict[str, Path]:
    return {p.parent.name.removeprefix("trial_"): p for p in run.rglob("trial_*/result.json")}


def write_ledger(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_without_a_ledger_export_reads_result_json(run_copy, tmp_path):
    with_ledger = export_rows(run_copy, tmp_path / "a")
    (run_copy / LEDGER_FILE).unlink()
    rows = export_rows(run_copy, tmp_path / "b")
    assert len(rows) == NUM_TRIALS
    for trial_id, path in result_files(run_copy).items():
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        row = rows[trial_id]
        assert row["status"] == "completed" and row["epochs_run"] == 2 and row["ledger_only_epochs"] == 0
        assert row["best/best_test_acc"] == pytest.approx(max(x["best_test_acc"] for x in lines))
        assert row["best/sops_per_sample"] == pytest.approx(min(x["sops_per_sample"] for x in lines))
        assert row["final/sops_per_sample"] == pytest.approx(lines[-1]["sops_per_sample"])
        # a complete result.json: the ledger adds nothing
        same = {k: v for k, v in with_ledger[trial_id].items() if k.startswith(("final/", "best/"))}
        assert same == {k: row[k] for k in same}


def test_export_takes_epochs_result_json_lost_from_the_ledger(run_copy, tmp_path):
    """Ray's retry can leave ``result.json`` empty; the ledger still has every epoch."""
    files = result_files(run_copy)
    lost, kept = sorted(files)[:2]
    lines = files[lost].read_text().splitlines()
    files[lost].write_text("")
    rows = export_rows(run_copy, tmp_path / "a")
    assert rows[lost]["ledger_only_epochs"] == 2 and rows[kept]["ledger_only_epochs"] == 0
    assert rows[lost]["epochs_run"] == 2 and rows[lost]["status"] == "completed"
    # the ledger's result rows carry the metrics: the best over every epoch, as result.json had it
    assert rows[lost]["best/sops_per_sample"] == pytest.approx(
        min(json.loads(x)["sops_per_sample"] for x in lines)
    )

    # a ledger row with metrics fills the epoch result.json lost; a result.json row wins over a
    # ledger row of the same epoch; the last of duplicated ledger rows (a replay) wins
    files[lost].write_text(lines[-1] + "\n")  # epoch 1 lost
    ledger = [json.loads(x) for x in (run_copy / LEDGER_FILE).read_text().splitlines()]
    extra = [
        {"trial": lost, "event": "result", "epoch": 1, "metrics": {"sops_per_sample": 5.0}},
        {"trial": lost, "event": "result", "epoch": 1, "metrics": {"sops_per_sample": 3.0}},
        {"trial": kept, "event": "result", "epoch": 1, "metrics": {"sops_per_sample": 1.0}},
    ]
    write_ledger(run_copy / LEDGER_FILE, ledger + extra)
    rows = export_rows(run_copy, tmp_path / "b")
    assert rows[lost]["ledger_only_epochs"] == 1
    assert rows[lost]["best/sops_per_sample"] == pytest.approx(3.0)
    assert rows[kept]["best/sops_per_sample"] > 1.0

    # Tune's snapshot behind the ledger (a killed driver): the later epoch counts; its metrics
    # replace Tune's last result only when the ledger row has every study metric
    final = {"best_test_acc": 0.9, "sops_per_sample": 2.0, "epoch": 3}
    later = [
        {"trial": lost, "event": "result", "epoch": 3, "budget": 3.0, "metrics": final},
        {"trial": kept, "event": "result", "epoch": 3, "budget": 4.0},
    ]
    write_ledger(run_copy / LEDGER_FILE, ledger + later)
    before = rows
    rows = export_rows(run_copy, tmp_path / "b2")
    assert rows[lost]["epochs_run"] == 3 and rows[lost]["status"] == "completed"
    assert rows[lost]["final/sops_per_sample"] == 2.0 and rows[lost]["best/best_test_acc"] == 0.9
    assert rows[kept]["epochs_run"] == 3 and rows[kept]["status"] == "pruned"  # 3 of its 4 epochs
    assert rows[kept]["final/sops_per_sample"] == before[kept]["final/sops_per_sample"]
    assert rows[kept]["final/epoch"] == 2  # the metrics are still those of epoch 2

    (run_copy / LEDGER_FILE).unlink()  # without the ledger the lost epoch stays lost
    rows = export_rows(run_copy, tmp_path / "c")
    assert rows[lost]["ledger_only_epochs"] == 0
    assert rows[lost]["best/sops_per_sample"] == pytest.approx(json.loads(lines[-1])["sops_per_sample"])
