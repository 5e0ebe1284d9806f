"""Real searches (every trial runs engine.fit): packing on logical GPUs, MLflow, pruning, export,
resume after a driver crash, and a two-node Ray cluster joined with --address."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray.tune import Callback

from ckd_search.cli import main
from ckd_search.search.settings import SearchSettings
from tests.helpers import journal_trials
from tests.helpers import mlflow_runs
from tests.helpers import two_key_space

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


# --- one search on 16 logical GPUs, shared by several tests ------------------------------------
@pytest.fixture(scope="module")
def gpu_search(tmp_path_factory, tiny_fixed) -> Iterator[tuple[SearchSettings, Any]]:
    """5 trials, 0.25 GPU + 1 CPU each, ASHA over 3 epochs, on ``ray.init(num_cpus=2, num_gpus=16)``."""
    import ray

    from ckd_search.search.tuner import create_search
    from ckd_search.search.tuner import run_search

    tmp = tmp_path_factory.mktemp("gpu-search")
    path = two_key_space(
        tmp,
        {**tiny_fixed, "run.epochs": 3},
        study={"name": "lgpu", "metric": "train_loss", "mode": "min", "num_trials": 5, "seed": 1},
        scheduler={"asha": {"max_t": 3, "grace_period": 1, "reduction_factor": 2}},
        resources={"cpu": 1, "gpu": 0.25},
    )
    ray.init(num_cpus=2, num_gpus=16, include_dashboard=False, logging_level="WARNING")
    try:
        settings = create_search(path, out=tmp / "run")
        outcome = run_search(settings)
        yield settings, outcome
    finally:
        ray.shutdown()


def test_fractional_gpu_trials_run_concurrently(gpu_search):
    settings, outcome = gpu_search
    assert outcome.finished and sum(outcome.counts.values()) == 5
    _, _, children = mlflow_runs(settings)
    assert {r.data.params["resources.gpu_fraction"] for r in children} == {"0.25"}
    spans = sorted((r.info.start_time, r.info.end_time) for r in children)
    overlaps = sum(1 for (s1, e1), (s2, _) in zip(spans, spans[1:]) if s2 < e1)
    assert overlaps >= 1, spans  # two CPUs: two 0.25-GPU trials at once


def test_mlflow_child_runs_are_the_trials(gpu_search):
    from ckd_search.search.export import collect_trials

    settings, _ = gpu_search
    rows, _, _ = collect_trials(settings)
    client, parents, children = mlflow_runs(settings)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["ckd.best_trial_id"]
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} >= {
        "best_config.yaml",
        "results.csv",
        "space.yaml",
    }
    by_trial = {r.data.tags["ckd.trial_id"]: r for r in children}
    assert sorted(by_trial) == sorted(row["trial_id"] for row in rows)  # one run per trial, no dups
    numbers = {t.user_attrs["ray_trial_id"]: str(t.number) for t in journal_trials(settings)}
    assert {tid: r.data.tags["ckd.optuna_trial"] for tid, r in by_trial.items()} == numbers
    for row in rows:
        run = by_trial[row["trial_id"]]
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["ckd.study"] == settings.study_name
        assert run.info.status == "FINISHED" and run.data.tags["ckd.status"] == row["status"]
        assert float(run.data.params["loss.beta"]) == pytest.approx(row["config/loss.beta"])
        assert run.data.params["data.limit"] == "200" and run.data.params["kd.temperature"] in ("2.0", "4.0")
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert [m.step for m in history] == list(range(1, row["epochs_run"] + 1))
        assert history[-1].value == pytest.approx(row["final/train_loss"])
        assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_asha_stops_are_pruned_in_optuna(gpu_search):
    from optuna.trial import TrialState

    from ckd_search.search.export import collect_trials

    settings, outcome = gpu_search
    rows = {row["trial_id"]: row for row in collect_trials(settings)[0]}
    trials = journal_trials(settings, orphans=False)
    assert len(trials) == 5 and all(t.state.is_finished() for t in trials)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "ASHA (rf 2) stops the 4th trial of seed 1 (largest loss.beta) after one epoch"
    assert outcome.counts["pruned"] == len(pruned)
    for t in trials:
        row = rows[t.user_attrs["ray_trial_id"]]
        epochs = row["epochs_run"]
        assert sorted(t.intermediate_values) == list(range(1, epochs + 1))
        assert t.intermediate_values[epochs] == pytest.approx(row["final/train_loss"])
        if epochs < 3:
            assert t.state == TrialState.PRUNED and row["status"] == "pruned"
        else:
            assert t.state == TrialState.COMPLETE and t.value == pytest.approx(row["final/train_loss"])


def test_export_retrains_to_the_same_metric(gpu_search, tmp_path, capsys):
    import pyarrow.parquet as pq
    import torch

    from ckd_search.config import Config
    from ckd_search.engine import fit

    settings, outcome = gpu_search
    assert main(["export", settings.run_dir, "--top", "2", "--out", str(tmp_path)]) == 0
    assert "best 1" in capsys.readouterr().out
    table = pq.read_table(tmp_path / "trials.parquet").to_pandas()
    assert len(table) == 5 and set(table["status"]) <= {"completed", "pruned"}
    assert {"trial_id", "epochs_run", "config/loss.beta", "final/train_loss", "best/train_loss"} <= set(table)
    best = table[table["trial_id"] == outcome.best_trial].iloc[0]
    cfg = Config.from_yaml(tmp_path / "best_1.yaml")  # what `ckd-search train --config` reads
    assert cfg.loss.beta == pytest.approx(best["config/loss.beta"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the trial (1 CPU)
    try:
        result = fit(cfg)
    finally:
        torch.set_num_threads(threads)
    assert result.metrics[-1]["train_loss"] == pytest.approx(best["final/train_loss"], rel=1e-6)
    assert result.best_test_acc == pytest.approx(best["final/best_test_acc"])


def test_warm_start_from_an_earlier_search(gpu_search, tmp_path, tiny_fixed):
    settings, outcome = gpu_search
    path = two_key_space(
        tmp_path,
        {**tiny_fixed, "run.epochs": 3},
        study={"name": "warm", "metric": "train_loss", "mode": "min", "num_trials": 1},
    )
    out = tmp_path / "run"
    args = [
        "search",
        "--space",
        str(path),
        "--gpus",
        "0",
        "--out",
        str(out),
        "--warm-start-from",
        settings.run_dir,
    ]
    assert main(args) == 0  # runs on the module's Ray instance
    (first,) = journal_trials(SearchSettings.load(out), orphans=False)
    assert first.params["loss.beta"] == pytest.approx(outcome.best_config["loss.beta"])
    assert first.params["kd.temperature"] == outcome.best_config["kd.temperature"]
    assert first.value == pytest.approx(outcome.best_value)  # same config, same seed: same result


def test_failing_trials_are_recorded_as_failed(tmp_path, tiny_fixed, ray_cleanup):
    from ckd_search.search.export import collect_trials
    from ckd_search.search.tuner import create_search
    from ckd_search.search.tuner import run_search

    path = two_key_space(
        tmp_path,
        tiny_fixed,
        study={"name": "fail", "num_trials": 2, "max_failures": 0},
        space={"optim.lr": {"type": "grid", "values": [2.0e-3, 1.0e9]}},
        searcher="grid",
    )
    settings = create_search(path, out=tmp_path / "run", gpus=0)
    outcome = run_search(settings)  # a non-finite loss ends that trial only
    assert outcome.finished and outcome.counts["complete"] == 1 and outcome.counts["fail"] == 1
    rows = {r["config/optim.lr"]: r for r in collect_trials(settings)[0]}
    assert rows[1.0e9]["status"] == "failed" and rows[1.0e9]["tune_status"] == "ERROR"
    assert rows[2.0e-3]["status"] == "completed"
    states = {t.params["optim.lr"]: t.state.name for t in journal_trials(settings, orphans=False)}
    assert states[1.0e9] == "FAIL"
    _, _, children = mlflow_runs(settings)
    failed = [r for r in children if r.data.params["optim.lr"] == "1000000000.0"]
    assert (
        len(failed) == 1
        and failed[0].info.status == "FAILED"
        and failed[0].data.tags["ckd.status"] == "failed"
    )


# --- resume after the driver dies ---------------------------------------------------------------
class CrashAfter(Callback):
    """Raise in the driver loop once ``after`` trials finished, while ``flag`` exists."""

    def __init__(self, flag: Path, after: int) -> None:
        self.flag, self.after, self.done = str(flag), after, 0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self.done >= self.after and os.path.exists(self.flag):
            raise RuntimeError("simulated driver crash")


def damage_snapshot(experiment: Path, damage: str) -> None:
    """Leave Tune's snapshot as a driver killed while copying it to storage would.

    ``newer-broken``: a newer session whose searcher file is cut short, next to the whole one;
    ``only-broken``: the only session's searcher file cut short (no whole snapshot at all).
    """
    (searcher,) = experiment.glob("searcher-state-*.pkl")
    stamp = searcher.name.removeprefix("searcher-state-").removesuffix(".pkl")
    if damage == "only-broken":
        searcher.write_bytes(searcher.read_bytes()[:-40])
        return
    for path in experiment.glob(f"*-{stamp}.*"):
        data = path.read_bytes()
        cut = data[: len(data) // 2] if path == searcher else data
        (experiment / path.name.replace(stamp, "2099-01-01_00-00-00")).write_bytes(cut)


@pytest.mark.parametrize("damage", [None, "newer-broken", "only-broken"])
def test_resume_finishes_an_interrupted_search(tmp_path, tiny_fixed, monkeypatch, ray_cleanup, damage):
    """The resume restores Tune's newest whole snapshot; with none it restarts Tune in the same study."""
    from optuna.trial import TrialState

    from ckd_search.search.export import NOT_IN_SNAPSHOT
    from ckd_search.search.export import collect_trials
    from ckd_search.search.tuner import create_search
    from ckd_search.search.tuner import run_search

    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")
    path = two_key_space(
        tmp_path,
        {**tiny_fixed, "run.epochs": 3},
        study={"name": "resume", "metric": "train_loss", "mode": "min", "num_trials": 5, "seed": 3},
        scheduler={"asha": {"max_t": 3, "grace_period": 1, "reduction_factor": 3}},
    )
    flag = tmp_path / "crash"
    flag.touch()
    settings = create_search(path, out=tmp_path / "run", gpus=0, cpus=2)
    with pytest.raises(Exception):  # noqa: B017 - Tune may wrap the callback's RuntimeError
        run_search(settings, extra_callbacks=[CrashAfter(flag, after=2)])
    finished = [t for t in journal_trials(settings, orphans=False) if t.state.is_finished()]
    assert 2 <= len(finished) < 5, "the crash interrupted the search"
    _, parents, _ = mlflow_runs(settings)
    assert parents[0].info.status == "KILLED"
    flag.unlink()
    if damage:
        damage_snapshot(Path(settings.experiment_path), damage)

    assert main(["search", "--resume", settings.run_dir]) == 0
    trials = journal_trials(settings, orphans=False)
    assert len(trials) == 5 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    rows = collect_trials(settings)[0]
    if damage == "only-broken":  # a new Tune experiment ran just the trials the study lacked
        earlier = [r for r in rows if r["tune_status"] == NOT_IN_SNAPSHOT]
        ended = sorted(t.user_attrs["ray_trial_id"] for t in finished)
        assert sorted(r["trial_id"] for r in earlier) == ended
        assert all(r["epochs_run"] >= 1 and "final/train_loss" in r for r in earlier)
    if damage == "newer-broken":
        assert len(list(Path(settings.experiment_path).glob("*2099-01-01_00-00-00*.incomplete"))) == 4
    assert len(rows) == 5 and {r["status"] for r in rows} <= {"completed", "pruned"}
    assert sorted(t.user_attrs["ray_trial_id"] for t in trials) == sorted(r["trial_id"] for r in rows)
    client, parents, children = mlflow_runs(settings)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    live = [r for r in children if r.data.tags["ckd.trial_id"] in {row["trial_id"] for row in rows}]
    assert len(live) == 5 and {r.info.status for r in live} == {"FINISHED"}
    assert all(r.info.status != "RUNNING" for r in children)  # orphans (if any) were KILLED
    for run in live:  # resumed trials did not log an epoch twice
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert steps == sorted(set(steps))
    assert settings.asha_path.is_file()


# --- a two-node cluster ---------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen) -> None:
    """Stop one ``ray start --block`` process we started (its reaper takes the node down)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _driver(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``ckd-search ARGS`` as its own driver process (Ray reads RAY_AUTH_MODE at import)."""
    return subprocess.run(
        [sys.executable, "-m", "ckd_search.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


ALIVE = (
    "import ray, sys, time; ray.init(address=sys.argv[1], logging_level='WARNING')\n"
    "deadline = time.monotonic() + 60\n"
    "while sum(n['Alive'] for n in ray.nodes()) < 2 and time.monotonic() < deadline: time.sleep(0.5)\n"
    "sys.exit(0 if sum(n['Alive'] for n in ray.nodes()) == 2 else 1)"
)


@pytest.fixture
def two_node_cluster(tmp_path) -> Iterator[tuple[str, dict[str, str]]]:
    """Head and worker nodes (1 CPU + 8 logical GPUs each) on this machine; torn down by pid.

    Ray 2.60 enables token authentication for new clusters: head, worker and driver all run with
    RAY_AUTH_MODE=token and read ~/.ray/auth_token.
    """
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ckdray", dir="/tmp")  # short: Ray's socket paths are limited
    ray_exe = str(Path(sys.executable).with_name("ray"))
    common = ["--num-cpus", "1", "--num-gpus", "8", "--block", "--disable-usage-stats"]
    procs: list[subprocess.Popen] = []
    logs = [open(tmp_path / f"node{i}.log", "w") for i in range(2)]  # noqa: SIM115
    try:
        head = [
            ray_exe,
            "start",
            "--head",
            "--port",
            str(port),
            "--temp-dir",
            temp,
            "--include-dashboard",
            "false",
        ]
        procs.append(
            subprocess.Popen(
                [*head, *common], stdout=logs[0], stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        )
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while (
            time.monotonic() < deadline and "Ray runtime started" not in (tmp_path / "node0.log").read_text()
        ):
            assert procs[0].poll() is None, (tmp_path / "node0.log").read_text()
            time.sleep(0.5)
        procs.append(
            subprocess.Popen(
                [ray_exe, "start", "--address", address, *common],
                stdout=logs[1],
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        )
        alive = subprocess.run(
            [sys.executable, "-c", ALIVE, address], env=env, capture_output=True, text=True, timeout=120
        )
        assert alive.returncode == 0, alive.stderr[-2000:] + (tmp_path / "node1.log").read_text()[-2000:]
        yield address, env
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for log in logs:
            log.close()
        subprocess.run(["rm", "-rf", temp], check=False)


def test_search_on_a_two_node_cluster(two_node_cluster, tmp_path, tiny_fixed):
    address, env = two_node_cluster
    path = two_key_space(
        tmp_path,
        tiny_fixed,
        study={"name": "cluster", "num_trials": 2, "seed": 0},
        resources={"cpu": 1, "gpu": 0.5},
    )
    out = tmp_path / "run"
    proc = _driver(["--space", str(path), "--address", address, "--out", str(out)], env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finished" in proc.stdout and "up to 2 at once" in proc.stderr
    settings = SearchSettings.load(out)
    trials = journal_trials(settings, orphans=False)
    assert len(trials) == 2 and all(t.state.name == "COMPLETE" for t in trials)
    _, _, children = mlflow_runs(settings)
    assert len(children) == 2 and {r.data.params["resources.gpu_fraction"] for r in children} == {"0.5"}
    (s1, e1), (s2, e2) = sorted((r.info.start_time, r.info.end_time) for r in children)
    assert s2 < e1  # concurrent, and each node has one CPU: both nodes ran a trial


def test_the_outcome_of_a_search_stopped_before_its_study_existed_is_empty(tmp_path, tiny_search_config):
    from ckd_search.search.tuner import create_search
    from ckd_search.search.tuner import read_outcome

    settings = create_search(two_key_space(tmp_path, tiny_search_config), out=tmp_path / "run")
    settings.journal_path.write_text("")  # a driver killed before Optuna wrote the study
    outcome = read_outcome(settings)
    assert not outcome.finished and sum(outcome.counts.values()) == 0


def test_relative_paths_of_a_new_search_are_kept_absolute(tmp_path, tiny_search_config, monkeypatch):
    from ckd_search.search.space import load_space
    from ckd_search.search.tuner import create_search

    monkeypatch.chdir(tmp_path)
    fixed = {**tiny_search_config, "data.cache_dir": "caches/ckd"}
    settings = create_search(two_key_space(tmp_path, fixed), out=tmp_path / "run")
    assert settings.overrides == {"data.cache_dir": str(tmp_path / "caches" / "ckd")}
    monkeypatch.chdir(tmp_path / "run")  # a resume from another folder reads the same cache
    space = load_space(settings.space_file, settings.overrides)
    assert space.fixed["data.cache_dir"] == str(tmp_path / "caches" / "ckd")


def test_the_outcome_names_the_tied_best_trial_export_and_analyze_name(tmp_path, tiny_search_config):
    """Optuna's best_trial takes the first trial by number; every other view the lower Ray trial id."""
    import optuna

    from ckd_search.search.optuna_search import RAY_TRIAL_ATTR
    from ckd_search.search.optuna_search import journal_storage
    from ckd_search.search.tuner import create_search
    from ckd_search.search.tuner import read_outcome

    settings = create_search(two_key_space(tmp_path, tiny_search_config), out=tmp_path / "run")
    study = optuna.create_study(
        study_name=settings.study_name, storage=journal_storage(settings.journal_path), direction="minimize"
    )  # the space's train_loss, min
    for ray_id, value in (("d9806f54", 0.5), ("befdf267", 0.5), ("0aaaaaaa", 0.75)):
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={RAY_TRIAL_ATTR: ray_id}))
    outcome = read_outcome(settings)
    assert (outcome.best_trial, outcome.best_value) == ("befdf267", 0.5)
