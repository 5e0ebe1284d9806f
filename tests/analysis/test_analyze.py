"""``ckd-search analyze`` on a real (tiny) search run directory."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from contextlib import nullcontext

import pytest
import yaml

from ckd_search.analysis.importance import compute_importances
from ckd_search.analysis.importance import infer_distribution
from ckd_search.analysis.results import load_run
from ckd_search.cli import main


def test_loader_builds_trial_and_epoch_tables(search_run, trial_specs):
    run = load_run(search_run)
    t = run.trials
    assert sorted(t["trial_id"]) == [tid for tid, _ in trial_specs]
    assert run.max_epoch == 3
    status = dict(zip(t["trial_id"], t["status"]))
    assert status["t0006"] == "pruned"
    assert all(status[tid] == "complete" for tid, _ in trial_specs[:5])
    assert {"kd.e_th", "kd.k", "loss.beta", "kd.schedule", "run.epochs"} <= set(t.columns)
    assert t["best_test_acc"].between(0, 1).all()
    assert len(run.epochs) == 5 * 3 + 1
    assert {"trial_id", "epoch", "test_acc", "gamma", "p_replace"} <= set(run.epochs.columns)
    assert "trial_id" not in run.epochs.columns.drop("trial_id")  # Ray fields dropped, id kept once
    assert "pid" not in run.epochs.columns
    assert run.name == "digits_dvs"
    assert run.descriptors["classes"] == 10
    assert 0.0 <= run.descriptors["cka_rgb_dvs"] <= 1.0


def test_loader_skips_cut_lines_and_keeps_the_last_replayed_epoch(search_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(search_run, run_dir)
    # a trial that ran three epochs (one ran a single epoch; directory order differs by file system)
    result = next(p for p in sorted(run_dir.rglob("result.json")) if len(p.read_text().splitlines()) == 3)
    lines = result.read_text().splitlines()
    replay = json.loads(lines[-1])
    replay["test_acc"] = 0.999  # a restored trial reports its last epoch again
    result.write_text("\n".join(lines + [json.dumps(replay), '{"epoch": 4, "test_a']) + "\n")
    run = load_run(run_dir)
    tid = replay["trial_id"]
    rows = run.epochs[run.epochs["trial_id"] == tid]
    assert list(rows["epoch"]) == [1, 2, 3]
    assert rows["test_acc"].iloc[-1] == 0.999
    assert any("unreadable line" in n for n in run.notes)


def test_status_follows_the_reported_budget(tmp_path):
    """run.epochs searched: a trial that reached its own (smaller) budget is complete, not pruned."""

    def write(trial_id, budget, epochs):
        folder = tmp_path / "run" / f"trial_{trial_id}"
        folder.mkdir(parents=True)
        cfg = {"run.epochs": budget, "kd.k": 1.0}
        lines = [
            {
                "epoch": e,
                "test_acc": 0.1 * e,
                "budget_epochs": float(budget),
                "trial_id": trial_id,
                "config": cfg,
            }
            for e in range(1, epochs + 1)
        ]
        (folder / "result.json").write_text("".join(json.dumps(x) + "\n" for x in lines))

    write("a", 2, 2)
    write("b", 4, 4)
    write("c", 4, 1)
    (tmp_path / "run" / "trial_c" / "error.txt").write_text("boom")
    write("d", 4, 2)
    t = load_run(tmp_path / "run").trials.set_index("trial_id")
    assert dict(t["status"]) == {"a": "complete", "b": "complete", "c": "error", "d": "pruned"}
    assert t.loc["b", "best_test_acc"] == pytest.approx(0.4)
    assert t.loc["a", "kd.e_th"] == 1.0  # implicit switch point: half the run

    # a search still running: no trial has reached its budget yet, so none is complete
    shutil.rmtree(tmp_path / "run")
    write("e", 6, 3)
    write("f", 6, 2)
    # no space file: a reported budget still counts; the longest trial stands in only for none
    running = load_run(tmp_path / "run")
    assert set(running.trials["status"]) == {"pruned"}
    assert any("no trial is complete" in n for n in running.notes)
    space = {"study": {"name": "s"}, "space": {"kd.k": {"type": "loguniform", "low": 0.1, "high": 10.0}}}
    space["scheduler"] = {"asha": {"max_t": 6, "grace_period": 1, "reduction_factor": 2}}
    (tmp_path / "run" / "space.yaml").write_text(yaml.safe_dump(space))
    assert set(load_run(tmp_path / "run").trials["status"]) == {"pruned"}
    space["scheduler"]["asha"]["max_t"] = 3  # ASHA's max_t below the budget: e is complete
    (tmp_path / "run" / "space.yaml").write_text(yaml.safe_dump(space))
    assert dict(load_run(tmp_path / "run").trials.set_index("trial_id")["status"]) == {
        "e": "complete",
        "f": "pruned",
    }


def test_importances_are_normalised(search_run):
    run = load_run(search_run)
    imp = compute_importances(run.trials, epochs=run.epochs)
    # one trial is adaptive: e_th does not act there, so it is ranked within the phased trials
    assert {"kd.k", "loss.beta"} <= set(imp.params) and "kd.e_th" not in imp.params
    phased = imp.by_group["kd.schedule=phased"]
    assert "kd.e_th" in phased.params
    for ranking in (imp, phased):
        assert set(ranking.by_method) == {"PED-ANOVA", "fANOVA"}
        for values in ranking.by_method.values():
            assert sum(values.values()) == pytest.approx(1.0, abs=1e-6)
            assert all(v >= 0 for v in values.values())


def test_kd_k_enters_the_importance_study_as_log10(search_run):
    run = load_run(search_run)
    k = run.trials["kd.k"]
    dist = infer_distribution("kd.k", k)
    assert (dist.low, dist.high) == pytest.approx((math.log10(k.min()), math.log10(k.max())))
    beta = run.trials["loss.beta"]
    assert (infer_distribution("loss.beta", beta).low, infer_distribution("loss.beta", beta).high) == (
        beta.min(),
        beta.max(),
    )


def test_analyze_command_writes_self_contained_report(search_run_with_mlflow, tmp_path, capsys):
    run_dir, parent_id = search_run_with_mlflow
    fidelity = {
        "settings": {"full_epochs": 4, "low_epochs": 1, "metric": "best_test_acc"},
        "rows": [
            {
                "params": {"kd.e_th": 1.0, "kd.k": 1.0, "loss.beta": 0.5},
                "full": 0.1 * i,
                "truncate": 0.05 * i,
                "compress": 0.3 - 0.1 * i,
            }
            for i in range(3)
        ],
        "spearman": {"truncate": {"rho": 1.0, "p": 0.0}, "compress": {"rho": -1.0, "p": 0.0}},
        "regret": {"truncate": 0.0, "compress": 0.2},
    }
    (run_dir / "fidelity.json").write_text(json.dumps(fidelity))
    out = tmp_path / "report"
    assert main(["analyze", str(run_dir), "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    for title in (
        "hyperparameter importance",
        "(e_th, log10 k) plane",
        "(p_th, log10 k) plane",
        "gamma(e) and P_replace",
        "learning curves",
        "parallel coordinates",
        "schedule kinds",
        "Best configs",
        "Data sets: descriptors and best switch",
        "Fidelity: truncate vs compress",
    ):
        assert title in html and title in md, title
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(images) >= 7
    assert all(len(img) > 1000 for img in images)
    assert "<img" in html and "src='figures/" not in html  # nothing linked from outside
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert len(figures) >= 7
    for name in figures:
        assert f"figures/{name}" in md
    summary = json.loads((out / "summary.json").read_text())
    imp = summary["runs"]["digits_dvs"]["importance"]
    for values in imp.values():
        assert math.isclose(sum(values.values()), 1.0, abs_tol=1e-6)
    assert "adaptive" in md and "phased" in md
    assert "Pareto" not in md and "pareto" not in summary["runs"]["digits_dvs"]  # one objective
    printed = capsys.readouterr().out
    assert parent_id in printed

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    logged = {a.path for a in client.list_artifacts(parent_id, "analysis")}
    assert {"analysis/report.html", "analysis/report.md"} <= logged


def test_analyze_two_runs_side_by_side(search_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(search_run, other)
    desc = json.loads((other / "descriptors.json").read_text())
    desc["name"] = "digits_dvs_copy"
    (other / "descriptors.json").write_text(json.dumps(desc))
    out = tmp_path / "report"
    assert main(["analyze", str(search_run), str(other), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    table = md.split("## Data sets: descriptors and best switch", 1)[1]
    assert "digits_dvs_copy" in table and "best e_th" in table and "cka_rgb_dvs" in table


def test_analyze_bad_input_is_a_one_line_error(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["analyze", str(empty), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no such run directory" in err and "no trial results" in err


def test_export_parquet_is_read_when_no_result_json(search_run, tmp_path):
    """A run directory holding only ``export/trials.parquet`` (``ckd-search export`` layout)."""
    import pandas as pd

    source = load_run(search_run).trials
    rows = []
    for rec in source.to_dict("records"):
        row = {
            "trial_id": rec["trial_id"],
            "status": "completed" if rec["status"] == "complete" else "pruned",
            "epochs_run": rec["epochs_run"],
            "best/best_test_acc": rec["best_test_acc"],
            "final/test_acc": rec["final_test_acc"],
        }
        row.update(
            {f"config/{k}": rec[k] for k in ("kd.e_th", "kd.k", "loss.beta", "kd.schedule", "run.epochs")}
        )
        rows.append(row)
    run_dir = tmp_path / "exported"
    (run_dir / "export").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(run_dir / "export" / "trials.parquet")
    run = load_run(run_dir)
    assert list(run.trials.sort_values("trial_id")["status"]) == list(
        source.sort_values("trial_id")["status"]
    )
    assert run.epochs.empty
    assert main(["analyze", str(run_dir), "--out", str(tmp_path / "report")]) == 0
    assert "hyperparameter importance" in (tmp_path / "report" / "report.md").read_text()


def test_a_figure_replaces_its_file_whole_or_not_at_all(tmp_path, monkeypatch):
    from ckd_search.analysis import plots

    path = tmp_path / "figures" / "plane.png"
    fig = plots._figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    assert plots._save(fig, path) == path
    old = path.read_bytes()
    assert old.startswith(b"\x89PNG")

    def torn(target, **kwargs) -> None:  # the canvas fails half way through the PNG
        with open(target, "wb") if isinstance(target, str | os.PathLike) else nullcontext(target) as out:
            out.write(old[:40])
        raise RuntimeError("killed mid-draw")

    monkeypatch.setattr(fig, "savefig", torn)
    with pytest.raises(RuntimeError, match="mid-draw"):
        plots._save(fig, path)
    assert path.read_bytes() == old and os.listdir(path.parent) == ["plane.png"]  # no temp file left


def test_folders_the_journal_says_were_handed_on_or_orphaned_are_left_out(tmp_path):
    """After a resume: a dead trial's folder stays, its Optuna trial went on under another id."""
    import optuna
    import yaml

    from ckd_search.search.optuna_search import IDS_ATTR
    from ckd_search.search.optuna_search import ORPHAN_ATTR
    from ckd_search.search.optuna_search import RAY_TRIAL_ATTR
    from ckd_search.search.optuna_search import journal_storage

    run = tmp_path / "run"
    for trial_id, epochs in (("a", 1), ("b", 3), ("c", 1), ("d", 3)):
        folder = run / f"trial_{trial_id}"
        folder.mkdir(parents=True)
        lines = [
            {"epoch": e, "test_acc": 0.2 * e, "trial_id": trial_id, "config": {"kd.k": 1.0}}
            for e in (1, 2, 3)
        ]
        (folder / "result.json").write_text("".join(json.dumps(x) + "\n" for x in lines[:epochs]))
    (run / "search.yaml").write_text(yaml.safe_dump({"study_name": "s"}))
    study = optuna.create_study(study_name="s", storage=journal_storage(run / "optuna.journal"))
    adopted = study.ask()  # asked for a, which died; b ran it to the end
    adopted.set_user_attr(RAY_TRIAL_ATTR, "b")
    study._storage.set_trial_system_attr(adopted._trial_id, IDS_ATTR, ["a", "b"])
    study.tell(adopted, 0.6)
    orphan = study.ask()  # asked for c, nothing adopted it
    orphan.set_user_attr(RAY_TRIAL_ATTR, "c")
    study._storage.set_trial_system_attr(orphan._trial_id, ORPHAN_ATTR, True)
    study.tell(orphan, state=optuna.trial.TrialState.FAIL)
    plain = study.ask()
    plain.set_user_attr(RAY_TRIAL_ATTR, "d")
    study.tell(plain, 0.6)
    loaded = load_run(run)
    assert sorted(loaded.trials["trial_id"]) == ["b", "d"]
    assert any("trial a left out" in n for n in loaded.notes)


def test_runs_of_one_data_set_in_same_named_folders_get_their_own_labels(tmp_path):
    from types import SimpleNamespace

    from ckd_search.analysis.report import _labels
    from ckd_search.analysis.report import _slug

    runs = [
        SimpleNamespace(name="digits_dvs", run_dir=tmp_path / "exp1" / "switching"),
        SimpleNamespace(name="digits_dvs", run_dir=tmp_path / "exp2" / "switching"),
        SimpleNamespace(name="digits_dvs", run_dir=tmp_path / "exp3" / "other"),
        SimpleNamespace(name="cepdvs", run_dir=tmp_path / "exp4" / "switching"),
    ]
    labels = _labels(runs)  # type: ignore[arg-type]
    assert labels == [
        "digits_dvs (switching) #1",
        "digits_dvs (switching) #2",
        "digits_dvs (other)",
        "cepdvs",
    ]
    assert len({_slug(label) for label in labels}) == len(labels)  # figure files cannot collide
