"""A small but real search run directory: a few short engine.fit trainings written as Ray trials."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckd_search.config import Config

TINY = {
    "data.limit": 320,
    "data.size": 16,
    "data.timesteps": 3,
    "model.width": 0.0625,
    "teacher.epochs": 1,
    "run.epochs": 3,
    "optim.batch_size": 16,
    "optim.lr": 5e-3,
    "run.device": "cpu",
    "run.threads": 1,
}

# (trial id, overrides): phased trials over (e_th, k, beta), one adaptive, one stopped early.
TRIALS = [
    ("t0001", {"kd.e_th": 1.0, "kd.k": 100.0, "loss.beta": 0.5}),
    ("t0002", {"kd.e_th": 2.0, "kd.k": 0.01, "loss.beta": 0.1}),
    ("t0003", {"kd.e_th": 1.5, "kd.k": 3.0, "loss.beta": 0.9}),
    ("t0004", {"kd.e_th": 2.5, "kd.k": 30.0, "loss.beta": 0.3}),
    ("t0005", {"kd.schedule": "adaptive", "kd.p_th": 0.3, "kd.k": 10.0, "kd.e_th": 1.0, "loss.beta": 0.6}),
    ("t0006", {"kd.e_th": 0.5, "kd.k": 1.0, "loss.beta": 0.2, "run.max_epochs": 1}),
]


def tiny_config(cache_dir: Path, **extra: object) -> Config:
    return Config.from_dict({**TINY, "data.cache_dir": str(cache_dir), **extra})


def write_ray_trial(run_dir: Path, trial_id: str, flat: dict, history: list[dict]) -> Path:
    """Ray Tune's trial folder layout: params.json and result.json (one JSON line per epoch)."""
    folder = run_dir / "study" / f"trainable_{trial_id}_00000_kd_k={flat.get('kd.k')}"
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(flat))
    with open(folder / "result.json", "w") as fh:
        total = 0.0
        for i, metrics in enumerate(history, start=1):
            total += metrics.get("epoch_time_s", 0.0)
            line = {
                **metrics,
                "trial_id": trial_id,
                "training_iteration": i,
                "config": flat,
                "done": i == len(history),
                "time_total_s": total,
                "pid": 1,
                "hostname": "test",
                "date": "2026-01-01_00-00-00",
                "timestamp": 1767225600 + i,
            }
            fh.write(json.dumps(line) + "\n")
    return folder


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One data/teacher cache for every test here (the tiny data set is built once)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny(cache_dir):
    """Factory of tiny CPU configs sharing the session cache: ``tiny(**dotted_overrides)``."""
    return lambda **extra: tiny_config(cache_dir, **extra)


@pytest.fixture(scope="session")
def trial_specs():
    return list(TRIALS)


@pytest.fixture(scope="session")
def search_run(tmp_path_factory, cache_dir) -> Path:
    """RUN_DIR with six real trials (3 epochs, one pruned after 1), descriptors.json and mlflow.db."""
    from ckd_search.analysis.descriptors import dataset_descriptors
    from ckd_search.analysis.descriptors import write_descriptors
    from ckd_search.engine import fit
    from ckd_search.prepare import prepare

    root = tmp_path_factory.mktemp("analysis")
    run_dir = root / "run"
    base = tiny_config(cache_dir)
    prepared = prepare(base)
    for trial_id, overrides in TRIALS:
        cfg = base.replace(**overrides)
        result = fit(cfg, prepared=prepared)
        # a search reports the trial config as flat dotted keys: fixed values plus drawn ones
        write_ray_trial(run_dir, trial_id, {**TINY, **overrides}, result.metrics)
    write_descriptors(run_dir, dataset_descriptors(prepared, base, max_samples=64))
    return run_dir


@pytest.fixture(scope="session")
def search_run_with_mlflow(search_run: Path, tmp_path_factory) -> tuple[Path, str]:
    """A copy of ``search_run`` with an MLflow store holding a parent run (tagged as the search layer
    tags it) and one child."""
    import shutil

    import mlflow

    run_dir = tmp_path_factory.mktemp("tracked") / "run"
    shutil.copytree(search_run, run_dir)
    client = mlflow.MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.create_experiment("search", artifact_location=(run_dir / "mlartifacts").as_uri())
    parent = client.create_run(exp, run_name="search", tags={"ckd.role": "search"})
    client.create_run(exp, run_name="trial", tags={"mlflow.parentRunId": parent.info.run_id})
    return run_dir, parent.info.run_id
