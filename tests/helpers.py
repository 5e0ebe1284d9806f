"""Plain helpers shared by test modules (fixtures live in the conftest files)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


def edited_copy(raw: Mapping[str, Any], path: str, value: Any = None, delete: bool = False) -> dict[str, Any]:
    """A deep copy of ``raw`` with the nested key ``a/b/c`` set to ``value`` (or deleted)."""
    out = copy.deepcopy(dict(raw))
    node = out
    parts = path.split("/")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if delete:
        node.pop(parts[-1])
    else:
        node[parts[-1]] = value
    return out


def two_key_space(folder: Path, fixed: Mapping[str, Any], name: str = "space.yaml", **sections: Any) -> Path:
    """A search-space file under ``folder``: two searched keys (loss.beta, kd.temperature), CPU
    trials; each keyword replaces its whole section (``study={...}``, ``scheduler={...}``)."""
    raw: dict[str, Any] = {
        "study": {"name": "t", "metric": "train_loss", "mode": "min", "num_trials": 3, "seed": 0},
        "fixed": dict(fixed),
        "space": {
            "loss.beta": {"type": "uniform", "low": 0.0, "high": 4.0},
            "kd.temperature": {"type": "choice", "values": [2.0, 4.0]},
        },
        "resources": {"cpu": 1, "gpu": 0},
    }
    raw.update(sections)
    path = folder / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def exported_run(
    folder: Path, study: Mapping[str, Any], searcher: str, trials: list[tuple[str, int, dict, dict]]
) -> Path:
    """``folder/run`` holding only space.yaml and the ``ckd-search export`` table (no per-epoch results).

    ``trials``: (status, epochs run, config, metrics at the last epoch) per trial, ids t0, t1, ...;
    ``best/best_test_acc`` repeats ``final/best_test_acc``.
    """
    import pandas as pd

    raw = {"study": dict(study), "searcher": searcher}
    raw["space"] = {"kd.k": {"type": "loguniform", "low": 0.1, "high": 100.0}}
    run = folder / "run"
    (run / "export").mkdir(parents=True)
    (run / "space.yaml").write_text(yaml.safe_dump(raw))
    rows = [
        {
            "trial_id": f"t{i}",
            "status": status,
            "epochs_run": epochs,
            **{f"config/{k}": v for k, v in config.items()},
            **{f"final/{m}": v for m, v in final.items()},
            "best/best_test_acc": final["best_test_acc"],
        }
        for i, (status, epochs, config, final) in enumerate(trials)
    ]
    pd.DataFrame(rows).to_parquet(run / "export" / "trials.parquet")
    return run


def journal_trials(settings: Any, *, orphans: bool = True) -> list:
    """The search's Optuna trials from its journal; ``orphans=False`` leaves out those a resume orphaned."""
    import optuna

    from ckd_search.search.optuna_search import ORPHAN_ATTR
    from ckd_search.search.optuna_search import journal_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=settings.study_name, storage=journal_storage(settings.journal_path))
    trials = study.get_trials()
    return trials if orphans else [t for t in trials if not t.system_attrs.get(ORPHAN_ATTR)]


def mlflow_runs(settings: Any) -> tuple[Any, list, list]:
    """(client, the search's parent runs, its trial runs) from the search's MLflow experiment."""
    from mlflow import MlflowClient

    client = MlflowClient(settings.mlflow_uri)
    exp = client.get_experiment_by_name(settings.experiment_name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("ckd.role") == "search"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    return client, parents, children
