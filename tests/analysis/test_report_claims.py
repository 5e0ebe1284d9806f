"""What ``analyze`` claims, on small synthetic run directories: agreement with ``export`` (epoch
ledger, journal status), one search per folder, unfinished or noisy rankings said so, the switch in
one unit, and spreads that are unknown shown as unknown."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from ckd_search.analysis import report as report_mod
from ckd_search.analysis.importance import compute_importances
from ckd_search.analysis.results import EXPORT_STATUS
from ckd_search.analysis.results import load_run
from ckd_search.cli import main

SPACE = {"study": {"name": "s"}, "space": {"kd.k": {"type": "loguniform", "low": 1e-3, "high": 100.0}}}


def write_trial(root: Path, trial_id: str, cfg: dict[str, Any], accs: list[float], budget: int) -> Path:
    """A Tune trial folder (``trial_<id>``): params.json and one result.json line per epoch."""
    folder = root / f"trial_{trial_id}"
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(cfg))
    lines = [
        {
            "epoch": e,
            "test_acc": acc,
            "best_test_acc": max(accs[:e]),
            "budget_epochs": float(budget),
            "trial_id": trial_id,
            "config": cfg,
        }
        for e, acc in enumerate(accs, start=1)
    ]
    (folder / "result.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def write_ledger(root: Path, histories: dict[str, list[float]], budget: int) -> None:
    with open(root / "epochs.jsonl", "w") as fh:
        for trial_id, accs in histories.items():
            for e, acc in enumerate(accs, start=1):
                metrics = {"test_acc": acc, "best_test_acc": max(accs[:e]), "epoch": e}
                row = {"trial": trial_id, "event": "result", "epoch": e, "budget": float(budget)}
                fh.write(json.dumps({**row, "metrics": metrics}) + "\n")


def test_analyze_merges_the_epoch_ledger_as_export_does(tmp_path):
    """B's result.json lost two epochs (a retried trial), C's is empty; the ledger has them all."""
    from ckd_search.search.export import _row
    from ckd_search.search.export import ledger_histories
    from ckd_search.search.export import result_history
    from ckd_search.search.outcome import classify
    from ckd_search.search.space import load_space

    run = tmp_path / "run"
    run.mkdir()
    (run / "space.yaml").write_text(yaml.safe_dump(SPACE))
    cfg = {"run.epochs": 4, "kd.k": 0.1}
    write_trial(run, "A", cfg, [0.3, 0.5, 0.6, 0.7], 4)
    write_trial(run, "B", {**cfg, "kd.k": 1.0}, [0.4, 0.6], 4)
    (write_trial(run, "C", {**cfg, "kd.k": 3.0}, [0.1], 4) / "result.json").write_text("")
    full = {"A": [0.3, 0.5, 0.6, 0.7], "B": [0.4, 0.6, 0.75, 0.8], "C": [0.2, 0.3, 0.4, 0.5]}
    write_ledger(run, full, 4)

    loaded = load_run(run, compute_descriptors=False)
    t = loaded.trials.set_index("trial_id")
    assert sorted(t.index) == ["A", "B", "C"]  # C is no longer dropped
    assert t.loc["B", "status"] == "complete" and t.loc["B", "epochs_run"] == 4
    assert t.loc["B", "best_test_acc"] == pytest.approx(0.8)
    assert loaded.ranked().iloc[0]["trial_id"] == "B"
    assert len(loaded.epochs[loaded.epochs["trial_id"] == "B"]) == 4

    space = load_space(run / "space.yaml")
    ledger = ledger_histories(run / "epochs.jsonl")
    for trial_id in full:  # export's row of each trial says the same
        stored = result_history(run / f"trial_{trial_id}" / "result.json")
        row, reached = _row(space, trial_id, "TERMINATED", cfg, stored, ledger[trial_id], None)
        assert EXPORT_STATUS[classify(reached, error=False, max_t=None)] == t.loc[trial_id, "status"]
        assert row["epochs_run"] == t.loc[trial_id, "epochs_run"]
        assert row["best/best_test_acc"] == pytest.approx(t.loc[trial_id, "best_test_acc"])


def test_status_of_ended_trials_comes_from_the_journal(tmp_path):
    """A trial that reported its last epoch, then failed: the search (and export) count it failed."""
    import optuna

    from ckd_search.search.optuna_search import RAY_TRIAL_ATTR
    from ckd_search.search.optuna_search import journal_storage

    run = tmp_path / "run"
    for trial_id in ("a", "b"):
        write_trial(run, trial_id, {"run.epochs": 2, "kd.k": 1.0}, [0.4, 0.5], 2)
    (run / "search.yaml").write_text(yaml.safe_dump({"study_name": "s"}))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=journal_storage(run / "optuna.journal"))
    failed = study.ask()
    failed.set_user_attr(RAY_TRIAL_ATTR, "a")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    status = load_run(run, compute_descriptors=False).trials.set_index("trial_id")["status"]
    assert dict(status) == {"a": "error", "b": "complete"}


def test_a_trial_the_search_was_stopped_in_is_incomplete_not_pruned(tmp_path):
    """Killed mid-search: the journal records no end for the running trial, so it was not pruned."""
    import optuna

    from ckd_search.search.optuna_search import RAY_TRIAL_ATTR
    from ckd_search.search.optuna_search import journal_storage

    run = tmp_path / "run"
    write_trial(run, "done", {"run.epochs": 4, "kd.k": 1.0}, [0.2, 0.3, 0.4, 0.5], 4)
    write_trial(run, "asha", {"run.epochs": 4, "kd.k": 2.0}, [0.1], 4)
    write_trial(run, "killed", {"run.epochs": 4, "kd.k": 3.0}, [0.3, 0.6], 4)
    (run / "search.yaml").write_text(yaml.safe_dump({"study_name": "s"}))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=journal_storage(run / "optuna.journal"))
    for trial_id, state in (("done", "COMPLETE"), ("asha", "PRUNED")):
        trial = study.ask()
        trial.set_user_attr(RAY_TRIAL_ATTR, trial_id)
        study.tell(trial, 0.5 if state == "COMPLETE" else None, state=optuna.trial.TrialState[state])
    study.ask().set_user_attr(RAY_TRIAL_ATTR, "killed")  # still RUNNING when the driver died
    status = load_run(run, compute_descriptors=False).trials.set_index("trial_id")["status"]
    assert dict(status) == {"done": "complete", "asha": "pruned", "killed": "incomplete"}
    assert main(["analyze", str(run), "--out", str(tmp_path / "out")]) == 0
    overview = (tmp_path / "out" / "report.md").read_text()
    assert "| error | incomplete |" in overview  # the overview counts them apart


def test_analyze_refuses_a_folder_holding_several_searches(tmp_path, capsys):
    parent = tmp_path / "runs"
    for name, marker in (("a", "space.yaml"), ("b", "search.yaml")):
        write_trial(parent / name / "exp", "t", {"run.epochs": 2}, [0.5, 0.6], 2)
        (parent / name / marker).write_text(yaml.safe_dump(SPACE if marker == "space.yaml" else {}))
    assert main(["analyze", str(parent), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "2 searches (a, b)" in err and "\n" not in err
    assert len(load_run(parent / "a", compute_descriptors=False).trials) == 1  # one search is fine


def test_a_search_folder_keeps_its_own_trials_beside_a_search_below_it(tmp_path):
    """A run folder reused as a parent (a demo run into a folder that holds an older one):
    analyzing it ranks its own trials and names the search it left out, it does not refuse."""
    run = tmp_path / "run"
    write_trial(run / "study", "own", {"run.epochs": 2}, [0.5, 0.6], 2)
    (run / "space.yaml").write_text(yaml.safe_dump(SPACE))
    write_trial(run / "old" / "study", "older", {"run.epochs": 2}, [0.7, 0.9], 2)
    (run / "old" / "search.yaml").write_text(yaml.safe_dump({}))
    loaded = load_run(run, compute_descriptors=False)
    assert list(loaded.trials["trial_id"]) == ["own"]
    assert any("other search(es) below: old" in note for note in loaded.notes)


def test_an_unfinished_best_is_flagged_everywhere(tmp_path, capsys):
    """ASHA space, every trial stopped at 2-4 of 10 epochs: 'best' is said to be a pruned trial."""
    run = tmp_path / "run"
    run.mkdir()
    space = {**SPACE, "scheduler": {"asha": {"max_t": 10, "grace_period": 2, "reduction_factor": 2}}}
    (run / "space.yaml").write_text(yaml.safe_dump(space))
    for i, n in enumerate((2, 3, 4)):
        write_trial(run, f"t{i}", {"run.epochs": 10, "kd.k": 10.0**i}, [0.1 * (e + i) for e in range(n)], 10)
    assert main(["analyze", str(run), "--out", str(tmp_path / "out")]) == 0
    assert "(pruned, 4/10 epochs)" in capsys.readouterr().out
    md = (tmp_path / "out" / "report.md").read_text()
    assert "no trial is complete" in md
    overview = md.split("## Overview")[1].split("##")[0]
    assert "(pruned, 4/10 epochs)" in overview
    datasets = md.split("## Data sets")[1]
    assert "t2 (pruned, 4/10 epochs)" in datasets


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory) -> Path:
    """Phased trials in epochs and in iterations (100 per epoch: 1000 samples, batches of 10), an
    adaptive and a constant one; run.epochs 10, each trial complete."""
    run = tmp_path_factory.mktemp("mixed") / "run"
    run.mkdir()
    (run / "space.yaml").write_text(yaml.safe_dump(SPACE))
    (run / "descriptors.json").write_text(json.dumps({"train_samples": 1000}))
    base = {"run.epochs": 10, "optim.batch_size": 10}
    specs = [
        ("e1", {"kd.e_th": 3.0, "kd.k": 2.0}, 0.80),
        ("e2", {"kd.e_th": 6.0, "kd.k": 0.2}, 0.78),
        ("i1", {"kd.units": "iteration", "kd.e_th": 400.0, "kd.k": 0.01}, 0.79),
        ("ad", {"kd.schedule": "adaptive", "kd.p_th": 0.3, "kd.k": 5.0}, 0.70),
        ("co", {"kd.schedule": "constant"}, 0.60),
    ]
    for trial_id, cfg, acc in specs:
        write_trial(run, trial_id, {**base, **cfg}, [acc - 0.1] * 9 + [acc], 10)
    return run


def test_importance_and_parallel_coordinates_see_the_switch_in_epochs(mixed_run, tmp_path, monkeypatch):
    seen: dict[str, pd.DataFrame] = {}
    real_imp, real_par = report_mod.compute_importances, report_mod.plots.parallel_coordinates

    def imp(trials, *args, **kw):
        seen["importance"] = trials
        return real_imp(trials, *args, **kw)

    def par(trials, *args, **kw):
        seen["parallel"] = trials
        return real_par(trials, *args, **kw)

    monkeypatch.setattr(report_mod, "compute_importances", imp)
    monkeypatch.setattr(report_mod.plots, "parallel_coordinates", par)
    result = report_mod.build_report([load_run(mixed_run, compute_descriptors=False)], tmp_path / "out")
    for name in ("importance", "parallel"):
        t = seen[name].set_index("trial_id")
        assert t.loc["i1", "kd.k"] == pytest.approx(1.0) and t.loc["i1", "kd.e_th"] == pytest.approx(4.0)
    par_t = seen["parallel"].set_index("trial_id")
    assert math.isnan(par_t.loc["ad", "kd.e_th"]) and math.isnan(par_t.loc["co", "kd.e_th"])  # inactive
    summary = json.loads(result.summary.read_text())
    best = {r["trial_id"]: r for r in next(iter(summary["runs"].values()))["best"]}
    assert best["ad"].get("kd.e_th") is None  # the best table hides the e_th adaptive trials never used


def test_importance_says_what_it_rests_on_and_its_noise_floor(mixed_run, tmp_path):
    md = report_mod.build_report([load_run(mixed_run, compute_descriptors=False)], tmp_path / "o").markdown
    text = md.read_text()
    assert "5 complete of 5 trials" in text
    assert "fewer than 20" in text and "PED-ANOVA noise floor" in text
    trials = load_run(mixed_run, compute_descriptors=False).trials
    trials.loc[trials["trial_id"] == "co", "status"] = "pruned"
    imp = compute_importances(trials, noise_repeats=2)
    assert (
        "4 complete of 5 trials (1 pruned by ASHA and excluded; ranking conditional on surviving ASHA)"
        in (imp.basis())
    )


def test_noise_floor_of_a_pure_noise_objective_matches_its_importances():
    """No parameter matters: each share sits near its noise floor, and the ranking is flagged small."""
    import numpy as np

    rng = np.random.default_rng(0)
    n = 12
    trials = pd.DataFrame(
        {
            "trial_id": [f"t{i}" for i in range(n)],
            "status": "complete",
            "best_test_acc": 0.7 + rng.normal(0, 0.005, n),
            "kd.k": 10.0 ** rng.uniform(-2, 1, n),
            "loss.beta": rng.uniform(0, 1, n),
            "kd.temperature": rng.uniform(1, 8, n),
        }
    )
    imp = compute_importances(trials, ["kd.k", "loss.beta", "kd.temperature"], noise_repeats=3)
    assert set(imp.noise) == set(imp.by_method)
    assert all(math.isclose(sum(v.values()), 1.0, abs_tol=1e-6) for v in imp.noise.values())
    assert any("fewer than 20" in note for note in imp.notes)
    assert list(imp.table(with_noise=True).columns) == [
        "PED-ANOVA",
        "fANOVA",
        "PED-ANOVA noise floor",
        "fANOVA noise floor",
    ]


def test_data_set_table_gives_only_the_switch_that_acted_and_its_spread(mixed_run, tmp_path):
    phased_run = load_run(mixed_run, compute_descriptors=False)
    constant_run = load_run(mixed_run, compute_descriptors=False)
    constant_run.trials.loc[constant_run.trials["trial_id"] == "co", "best_test_acc"] = 0.99
    sec = report_mod._datasets_section([phased_run, constant_run], ["p", "c"])
    rows = sec.tables[0][1].set_index("run")
    assert rows.loc["p", "best e_th (epochs)"] == 3.0 and rows.loc["p", "e_th / E"] == pytest.approx(0.3)
    # the top 3: e1 (e_th/E 0.3, k 2), i1 (0.4, k 1 per epoch), e2 (0.6, k 0.2)
    assert rows.loc["p", "top-3 e_th / E"] == "0.3-0.6"
    assert rows.loc["p", "top-3 log10 k"] == f"{math.log10(0.2):.3g}-{math.log10(2.0):.3g}"
    assert rows.loc["c", "best schedule"] == "constant"
    for column in ("best e_th (epochs)", "e_th / E", "best k (per epoch)", "best adaptive k"):
        assert pd.isna(rows.loc["c", column])
    assert "optimistic" in " ".join(sec.text) and "one seed" in " ".join(sec.text)


def test_an_adaptive_best_has_its_k_labelled_adaptive(mixed_run):
    from ckd_search.analysis.results import describe_switch

    run = load_run(mixed_run, compute_descriptors=False)
    t = run.trials.set_index("trial_id")
    assert describe_switch(t.loc["ad"]) == "adaptive, p_th=0.3, adaptive k=5"
    assert describe_switch(t.loc["co"]) == "constant, gamma = 1"
    assert describe_switch({"kd.enabled": False, "kd.e_th": 3.0}) == "KD disabled"
    sec = report_mod._datasets_section([run], ["p"])
    run.trials.loc[run.trials["trial_id"] == "ad", "best_test_acc"] = 0.99
    rows = report_mod._datasets_section([run], ["a"]).tables[0][1].iloc[0]
    assert rows["best adaptive k"] == 5.0 and pd.isna(rows["best k (per epoch)"])
    assert sec.tables[0][1].iloc[0]["best k (per epoch)"] == 2.0


def test_one_seed_has_an_unknown_spread_not_zero():
    from ckd_search.analysis.reproduce import VARIANTS
    from ckd_search.analysis.reproduce import ablation_markdown
    from ckd_search.analysis.reproduce import mean_std
    from ckd_search.analysis.reproduce import summarise

    assert math.isnan(mean_std([0.8])[1]) and mean_std([0.8, 0.6])[1] == pytest.approx(0.1414, abs=1e-4)
    rows = [
        {"variant": v.name, "seed": 42, "best_test_acc": 0.8, "final_test_acc": 0.7, "teacher_test_acc": 0.9}
        for v in VARIANTS
    ]
    summary = summarise(rows, VARIANTS)
    assert summary["tet_baseline"]["best_std"] is None and summary["tet_baseline"]["final_std"] is None
    md = ablation_markdown({"dataset": "d", "seeds": [42], "runs": rows, "summary": summary})
    assert "80.00 ± n/a" in md and "± 0.00" not in md and "90.00 ± n/a %" in md


def test_the_seed_ceiling_is_called_a_reference_not_a_bound(tmp_path):
    fid = {
        "settings": {"full_epochs": 4, "low_epochs": 2, "train_seeds": [0, 1]},
        "rows": [{"params": {"kd.e_th": 1.0, "kd.k": 1.0}, "full": 0.5, "truncate": 0.4, "compress": 0.3}],
        "spearman": {"truncate": {"rho": 0.9, "p": 0.1}, "compress": {"rho": 0.5, "p": 0.3}},
        "seed_ceiling": {"rho": 0.7, "pairs": 1},
    }
    text = " ".join(report_mod._fidelity_section(fid, tmp_path / "f.png").text)
    assert "not a bound" in text and "single-seed-vs-single-seed" in text
    assert "cannot" not in text and "against itself" not in text


def test_the_report_goes_to_the_parent_run_of_the_searchs_own_store(tmp_path):
    """search.yaml names a store outside RUN_DIR; the parent is the one tagged with this study."""
    import mlflow

    from ckd_search.analysis.tracking import log_report
    from ckd_search.search.settings import SearchSettings

    run = tmp_path / "run"
    run.mkdir()
    uri = f"sqlite:///{tmp_path / 'shared' / 'store.db'}"
    (tmp_path / "shared").mkdir()
    SearchSettings(str(run), "mine", "exp", 2, str(run), uri).save()
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("exp", artifact_location=(tmp_path / "art").as_uri())
    mine = client.create_run(exp, tags={"ckd.role": "search", "ckd.study": "mine"}).info.run_id
    client.create_run(exp, tags={"ckd.role": "search", "ckd.study": "other"})  # newer, another study
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("# r\n")
    assert log_report(run, report) == (mine, None)
    assert [a.path for a in client.list_artifacts(mine, "analysis")] == ["analysis/report.md"]
    assert log_report(tmp_path / "report", report) == (None, None)  # no store: nothing to say


def test_a_moved_run_folder_never_gets_its_report_written_into_the_old_one(tmp_path):
    """The store in RUN_DIR records absolute artifact paths: after a move they name the old folder."""
    import mlflow

    from ckd_search.analysis.tracking import log_report
    from ckd_search.search.settings import SearchSettings

    old, run = tmp_path / "old", tmp_path / "moved"
    run.mkdir()
    SearchSettings(str(run), "mine", "exp", 2, str(run), f"sqlite:///{run / 'mlflow.db'}").save()
    client = mlflow.MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    exp = client.create_experiment("exp", artifact_location=str(old / "mlartifacts"))  # as before the move
    client.create_run(exp, tags={"ckd.role": "search", "ckd.study": "mine"})
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("# r\n")
    run_id, why = log_report(run, report)
    assert run_id is None and why is not None and str(old / "mlartifacts") in why and "\n" not in why
    assert not old.exists()


def test_a_spread_over_fewer_than_the_top_trials_gives_its_count():
    assert (
        report_mod._spread(pd.Series([0.5])) == "0.5-0.5 (n=1)"
    )  # one trial: no spread, not a pinned switch
    assert report_mod._spread(pd.Series([0.3, 0.6, math.nan])) == "0.3-0.6 (n=2)"
    assert report_mod._spread(pd.Series([0.3, 0.6, 0.4])) == "0.3-0.6"
    assert report_mod._spread(pd.Series([math.nan])) is None


@pytest.mark.parametrize("mode", ["max", "min"])
def test_a_schedule_kind_without_complete_trials_ranks_after_those_with_them(mode):
    from ckd_search.analysis.results import Ranking

    trials = pd.DataFrame(
        {
            "trial_id": ["p1", "p2", "a1", "a2"],
            "status": ["complete", "complete", "pruned", "pruned"],
            "kd.schedule": ["phased", "phased", "adaptive", "adaptive"],
            "m": [0.6, 0.62, 0.72, 0.1],  # the pruned values are low-budget ones
        }
    )
    table = report_mod.schedule_table(trials, Ranking("m", mode))
    assert list(table.index) == ["phased", "adaptive"]
    assert list(table["over"]) == ["complete", "pruned only (low budget)"]
    assert table.loc["phased", "best"] == (0.62 if mode == "max" else 0.6)
