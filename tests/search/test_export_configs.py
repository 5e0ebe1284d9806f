"""``ckd-search export`` of trials Tune's snapshot lacks, and of ranks whose config does not validate
(Tune itself is stubbed: its restored snapshot holds no trial)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from ckd_search.config import Config
from ckd_search.search.export import export_run
from ckd_search.search.settings import SearchSettings
from ckd_search.search.space import load_space
from tests.helpers import two_key_space

FIXED = {"run.epochs": 3, "data.size": 24, "model.width": 0.5, "kd.e_th": 2.0, "optim.batch_size": 8}


def search_dir(
    tmp_path: Path, storage: str, ended: dict[str, float]
) -> tuple[Path, dict[str, dict[str, Any]]]:
    """RUN_DIR with a space, search.yaml, a journal holding the ``ended`` trials (id -> train_loss)
    and the epoch ledger of each; returns it and each trial's drawn params."""
    import optuna

    from ckd_search.search.optuna_search import RAY_TRIAL_ATTR
    from ckd_search.search.optuna_search import journal_storage

    run = tmp_path / "run"
    run.mkdir()
    two_key_space(run, FIXED)
    SearchSettings(str(run), "s", "s", len(ended), storage, f"sqlite:///{run / 'mlflow.db'}").save()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=journal_storage(run / "optuna.journal"))
    drawn = {}
    with open(run / "epochs.jsonl", "w") as ledger:
        for trial_id, loss in ended.items():
            trial = study.ask()
            trial.suggest_float("loss.beta", 0.0, 4.0)
            trial.suggest_categorical("kd.temperature", [2.0, 4.0])
            trial.set_user_attr(RAY_TRIAL_ATTR, trial_id)
            study.tell(trial, loss)
            drawn[trial_id] = dict(trial.params)
            for epoch in (1, 2, 3):
                row = {"trial": trial_id, "event": "result", "epoch": epoch, "budget": 3.0}
                ledger.write(json.dumps({**row, "metrics": {"train_loss": loss + 3 - epoch}}) + "\n")
    return run, drawn


@pytest.fixture
def no_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tune's restored snapshot knows no trial (a restarted experiment): all come from the journal."""
    import ray.tune

    monkeypatch.setattr(
        ray.tune, "ExperimentAnalysis", lambda path: SimpleNamespace(trials=[], trial_dataframes={})
    )


def test_a_trial_missing_from_the_snapshot_exports_the_config_it_ran(tmp_path, no_snapshot):
    """s3:// storage: Tune's params.json cannot be read, so the config is built from the space as
    Tune built it (fixed values, resources, drawn params), not from the drawn params alone."""
    run, drawn = search_dir(tmp_path, "s3://bucket/runs", {"x1": 0.5})
    result = export_run(run, top=1, out=tmp_path / "out")
    assert [b["trial_id"] for b in result.best] == ["x1"]
    exported = Config.from_yaml(tmp_path / "out" / "best_1.yaml")
    space = load_space(run / "space.yaml")
    assert exported.flat() == space.build_config(drawn["x1"]).flat()
    assert exported.run.epochs == 3 and exported.data.size == 24  # the fixed values, not the defaults


def test_best_files_are_numbered_without_gaps_and_replace_an_earlier_export(tmp_path, no_snapshot):
    """The best trial's config does not validate: it is skipped (and listed), the next takes rank 1;
    stale files of an earlier, longer export go, the new ones replace theirs."""
    storage = str(tmp_path / "ray")
    run, _ = search_dir(tmp_path, storage, {"bad": 0.1, "good": 0.5, "ok": 0.7})
    params = Path(storage) / "s" / "trial_bad" / "params.json"
    params.parent.mkdir(parents=True)
    params.write_text(json.dumps({**FIXED, "kd.e_th": 150.0}))  # past run.epochs: invalid
    out = tmp_path / "out"
    out.mkdir()
    for k in (1, 2, 3):
        (out / f"best_{k}.yaml").write_text("# stale\n")
    result = export_run(run, top=3, out=out)
    assert [(b["rank"], b["trial_id"]) for b in result.best] == [(1, "good"), (2, "ok")]
    assert sorted(p.name for p in out.glob("best_*.yaml")) == ["best_1.yaml", "best_2.yaml"]
    assert "trial good" in (out / "best_1.yaml").read_text()
    index = json.loads((out / "export.json").read_text())
    assert [s["trial_id"] for s in index["skipped"]] == ["bad"]
    assert yaml.safe_load((out / "best_2.yaml").read_text())  # a whole config, not a stale stub
