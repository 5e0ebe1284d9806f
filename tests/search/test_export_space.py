"""``ckd-search export`` writes a self-describing folder (``OUT/space.yaml``: ``analyze OUT`` ranks as
``analyze RUN_DIR`` does) and goes on without an Optuna journal it cannot read (Tune is stubbed)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from ckd_search.analysis.results import load_run
from ckd_search.analysis.space_facts import read_space_facts
from ckd_search.search.export import export_run
from ckd_search.search.settings import SearchSettings
from ckd_search.search.space import load_space
from tests.helpers import two_key_space
from tests.search.test_export_configs import FIXED
from tests.search.test_export_configs import search_dir

MULTI = {"name": "t", "metric": ["best_test_acc", "sops_per_sample"], "mode": ["max", "min"], "num_trials": 3}


def stub_tune(monkeypatch: pytest.MonkeyPatch, trials: list[SimpleNamespace]) -> None:
    """Tune's restored snapshot holds ``trials`` (no per-epoch tables)."""
    import ray.tune

    monkeypatch.setattr(
        ray.tune, "ExperimentAnalysis", lambda path: SimpleNamespace(trials=trials, trial_dataframes={})
    )


def write_ledger(run: Path, metrics: dict[str, dict[str, float]]) -> None:
    """Three epochs per trial, each with the given metrics (the last epoch's values)."""
    with open(run / "epochs.jsonl", "w") as ledger:
        for trial_id, values in metrics.items():
            for epoch in (1, 2, 3):
                row = {"trial": trial_id, "event": "result", "epoch": epoch, "budget": 3.0, "metrics": values}
                ledger.write(json.dumps(row) + "\n")


def ranked_ids(run: Path) -> list[str]:
    return [str(t) for t in load_run(run, compute_descriptors=False).ranked()["trial_id"]]


def test_analyzing_the_export_folder_ranks_by_the_study_metric_as_the_run_does(tmp_path, monkeypatch):
    """metric train_loss, mode min: not ranked by best test top-1 once the export stands alone."""
    stub_tune(monkeypatch, [])
    run, _ = search_dir(tmp_path, str(tmp_path / "ray"), {"a": 0.9, "b": 0.3, "c": 0.6})
    export_run(run, top=2)
    out = run / "export"
    alone = load_run(out, compute_descriptors=False)
    assert alone.objectives == (("train_loss", "min"),)
    assert alone.ranking.column == "final/train_loss" and alone.ranking.ascending
    assert ranked_ids(out) == ranked_ids(run) == ["b", "c", "a"]
    assert read_space_facts(out) == read_space_facts(run)
    assert (out / "space.yaml").read_text() == (run / "space.yaml").read_text()  # a copy as given


def test_analyzing_the_export_folder_of_a_multi_objective_search_keeps_its_objectives(tmp_path, monkeypatch):
    stub_tune(monkeypatch, [])
    run, _ = search_dir(tmp_path, str(tmp_path / "ray"), {"a": 0.9, "b": 0.3, "c": 0.6})
    two_key_space(run, FIXED, study=MULTI, searcher="nsga2")
    write_ledger(
        run,
        {
            "a": {"best_test_acc": 0.8, "sops_per_sample": 5.0},  # front
            "b": {"best_test_acc": 0.6, "sops_per_sample": 2.0},  # front
            "c": {"best_test_acc": 0.5, "sops_per_sample": 6.0},  # dominated by both
        },
    )
    export_run(run, top=3)
    out = run / "export"
    assert (out / "pareto.json").is_file()
    alone, whole = load_run(out, compute_descriptors=False), load_run(run, compute_descriptors=False)
    assert alone.multi_objective and whole.multi_objective
    assert alone.objectives == whole.objectives == (("best_test_acc", "max"), ("sops_per_sample", "min"))
    assert ranked_ids(out) == ranked_ids(run)


def test_the_exported_space_holds_the_search_overrides_and_a_run_folder_keeps_its_own(tmp_path, monkeypatch):
    """run.epochs: 0 (nested) validates only with the search's --set run.epochs=3: the export folder
    has no search.yaml, so its space carries the override; ``--out RUN_DIR`` leaves the run's space."""
    stub_tune(monkeypatch, [])
    run, _ = search_dir(tmp_path, str(tmp_path / "ray"), {"a": 0.9, "b": 0.3})
    fixed = {k: v for k, v in FIXED.items() if k != "run.epochs"} | {"run": {"epochs": 0}}
    given = two_key_space(run, fixed).read_text()
    settings = SearchSettings.load(run)
    settings.overrides = {"run.epochs": 3}
    settings.save()
    export_run(run, top=1)
    out = run / "export"
    assert load_space(out / "space.yaml").fixed == load_space(run / "space.yaml", settings.overrides).fixed
    facts = read_space_facts(out)
    assert facts.read and facts == read_space_facts(run)
    export_run(run, top=1, out=run)
    assert (run / "space.yaml").read_text() == given


def test_analyzing_the_run_still_ranks_its_own_trials_after_an_export(tmp_path, monkeypatch):
    """RUN_DIR holds its Tune trials (result.json) and export/space.yaml: a space file in export/
    does not make that folder another search whose trials the run would leave out."""
    stub_tune(monkeypatch, [])
    run, _ = search_dir(tmp_path, str(tmp_path / "run"), {"a": 0.9, "b": 0.3, "c": 0.6})
    for trial_id, loss in {"a": 0.9, "b": 0.3, "c": 0.6}.items():
        folder = run / "s" / f"trial_{trial_id}"
        folder.mkdir(parents=True)
        line = {"epoch": 3, "train_loss": loss, "budget_epochs": 3.0, "trial_id": trial_id}
        (folder / "result.json").write_text(json.dumps(line) + "\n")
    export_run(run, top=1)
    assert (run / "export" / "space.yaml").is_file()
    whole = load_run(run, compute_descriptors=False)
    assert sorted(whole.trials["trial_id"]) == ["a", "b", "c"]
    assert not any("other search" in note for note in whole.notes)
    assert ranked_ids(run) == ranked_ids(run / "export") == ["b", "c", "a"]
    export_run(run, top=1, out=run / "s")  # into Tune's experiment folder: no space file there
    assert not (run / "s" / "space.yaml").exists()
    assert sorted(load_run(run, compute_descriptors=False).trials["trial_id"]) == ["a", "b", "c"]


@pytest.mark.parametrize("journal", ["empty", "another study", "not a journal"])
def test_an_unreadable_journal_is_a_warning_and_the_export_goes_on(tmp_path, monkeypatch, caplog, journal):
    """As ``analyze`` does: the trials Tune knows are exported, without the journal's statuses."""
    import optuna

    from ckd_search.search.optuna_search import journal_storage

    run, _ = search_dir(tmp_path, str(tmp_path / "ray"), {"x1": 0.5})
    path = run / "optuna.journal"
    path.unlink()
    if journal == "empty":
        path.write_text("")
    elif journal == "another study":
        optuna.create_study(study_name="other", storage=journal_storage(path))
    else:
        path.write_text("not a journal\n")
    config = {**FIXED, "loss.beta": 1.0, "kd.temperature": 2.0}
    last = {"epoch": 3, "budget_epochs": 3.0, "train_loss": 0.5}
    stub_tune(
        monkeypatch, [SimpleNamespace(trial_id="x1", status="TERMINATED", config=config, last_result=last)]
    )
    with caplog.at_level(logging.WARNING, logger="ckd_search"):
        result = export_run(run, top=1)
    assert result.trials == 1 and [b["trial_id"] for b in result.best] == ["x1"]
    assert yaml.safe_load((run / "export" / "best_1.yaml").read_text())["run"]["epochs"] == 3
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and str(path) in warned[0] and "\n" not in warned[0]
