"""MLflow tracking on Tune's driver thread: short bounded calls, bounded flushes, settings put back."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

HTTP_ENV = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")


@pytest.fixture
def hanging_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """An HTTP "server" that accepts connections and never answers (a hung tracking server):
    ``(url, connections accepted so far)``."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", held
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    sock.close()


@pytest.fixture
def no_http_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in HTTP_ENV:
        monkeypatch.delenv(name, raising=False)


def test_hanging_server_blocks_the_driver_one_short_call(
    tmp_path: Path, hanging_server: tuple[str, list[socket.socket]], no_http_env, tracking_callback
):
    url, connections = hanging_server
    cb = tracking_callback(url, tmp_path, call_timeout_s=1.0, retry_s=60.0, end_wait_s=0.0)
    cb.setup(total_num_samples=1)  # the parent run cannot be created: one attempt, then queued
    assert cb.pending == 1
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "1"  # one short call, not 120 s
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"  # and no retries by MLflow
    assert len(connections) == 1
    trial = SimpleNamespace(trial_id="a1", config={"run.epochs": 2}, last_result={}, status="RUNNING")
    cb.on_trial_start(0, [trial], trial)  # within retry_s of the failure: queued, not sent
    assert cb.pending == 2 and len(connections) == 1
    cb.on_experiment_end([trial])
    assert (tmp_path / "mlflow_pending.json").is_file()
    for name in HTTP_ENV:  # the search's settings do not outlive it
        assert name not in os.environ


def test_user_http_settings_win_and_stay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracking_callback):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    cb = tracking_callback(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path, call_timeout_s=2.0)
    cb.setup(total_num_samples=1)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    cb.on_experiment_end([])
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


def test_flush_hands_the_thread_back_after_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracking_callback
):
    from ckd_search.search import tracking

    cb = tracking_callback("sqlite:///unused.db", tmp_path, flush_budget_s=0.2)
    clock = [0.0]
    monkeypatch.setattr(tracking, "time", SimpleNamespace(monotonic=lambda: clock[0], sleep=time.sleep))
    sent: list[int] = []

    def slow(op: dict) -> None:  # a slow but working server: 0.1 s per call on the fake clock
        clock[0] += 0.1
        sent.append(op["n"])

    monkeypatch.setattr(cb, "_execute", slow)
    for n in range(20):
        cb._queue({"op": "metrics", "n": n})
    assert cb._flush()  # nothing failed
    assert sent == [0, 1] and cb.pending == 18  # the budget (0.2 s) is spent after two calls
    assert cb._flush(force=True) and sent == list(range(20)) and cb.pending == 0  # in order, once


def test_a_callback_pickled_before_the_newer_settings_restores_with_their_defaults(
    tmp_path, tracking_callback
):
    import pickle

    from ckd_search.search.tracking import MlflowTrackingCallback

    cb = tracking_callback(f"sqlite:///{tmp_path}/mlflow.db", tmp_path, end_wait_s=7.0)
    restored = pickle.loads(pickle.dumps(cb))
    assert restored.end_wait_s == 7.0  # a snapshot's own values win
    old = cb.__getstate__()
    for name in (
        "end_wait_s",
        "call_timeout_s",
        "flush_budget_s",
        "_env_set",
        "_spilled",
        "journal_path",
        "base_config",
    ):
        del old[name]  # what a snapshot from before these settings holds
    legacy = MlflowTrackingCallback.__new__(MlflowTrackingCallback)
    legacy.__setstate__(old)
    assert (legacy.end_wait_s, legacy.call_timeout_s, legacy.flush_budget_s, legacy._env_set) == (
        60.0,
        3.0,
        2.0,
        [],
    )
    assert legacy._spilled == 0 and legacy.get_state()["pending"] == []
    assert legacy.study_name == "study-1"
    assert legacy.journal_path is None and legacy._journal_rows(set()) == []  # no journal: Tune's trials only


def _spill_file(run_dir: Path, calls: list[dict]) -> Path:
    path = run_dir / "mlflow_pending.json"
    path.write_text(json.dumps(calls))
    return path


def test_spilled_calls_stay_on_disk_until_mlflow_took_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracking_callback
):
    spilled = [{"op": "metrics", "n": n} for n in range(3)]
    path = _spill_file(tmp_path, spilled)
    cb = tracking_callback("sqlite:///unused.db", tmp_path, retry_s=0.0)
    sent: list[int] = []
    up = {"calls": 1}  # MLflow takes this many calls, then goes down again

    def execute(op: dict) -> None:
        if not up["calls"]:
            raise ConnectionError("MLflow down")
        up["calls"] -= 1
        sent.append(op.get("n", -1))

    monkeypatch.setattr(cb, "_execute", execute)
    cb._load_spilled()
    cb._queue({"op": "parent_start"})
    assert not cb._flush(force=True) and sent == [0]
    assert json.loads(path.read_text()) == spilled[1:]  # was deleted on load: lost if killed now
    assert cb.get_state()["pending"] == [{"op": "parent_start"}]  # the file holds the others

    # the driver is killed here; the resumed one sends what neither MLflow nor the file lost, once
    resumed = tracking_callback("sqlite:///unused.db", tmp_path, retry_s=0.0)
    resumed.set_state(cb.get_state())
    resumed._load_spilled()
    monkeypatch.setattr(resumed, "_execute", execute)
    up["calls"] = 10
    assert resumed._flush(force=True) and resumed.pending == 0
    assert sent == [0, 1, 2, -1] and not path.exists()


def test_a_search_ending_in_an_outage_spills_once_and_loads_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracking_callback
):
    cb = tracking_callback("sqlite:///unused.db", tmp_path, retry_s=0.0)

    def down(op: dict) -> None:
        raise ConnectionError("MLflow down")

    monkeypatch.setattr(cb, "_execute", down)
    for n in range(2):
        cb._queue({"op": "metrics", "n": n})
    assert not cb._flush(force=True)
    cb._spill()
    path = tmp_path / "mlflow_pending.json"
    assert len(json.loads(path.read_text())) == 2 and cb.get_state()["pending"] == []
    cb._load_spilled()  # already queued: not queued twice
    assert cb.pending == 2


def test_a_resumed_search_sends_the_spilled_calls_then_removes_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracking_callback
):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    first = tracking_callback("http://127.0.0.1:9", tmp_path, retry_s=0.0, end_wait_s=0.0)  # nothing there
    first.setup(total_num_samples=1)
    trial = SimpleNamespace(trial_id="a1", config={"run.epochs": 2}, last_result={}, status="RUNNING")
    first.on_trial_start(0, [trial], trial)
    first.on_trial_result(0, [trial], trial, {"epoch": 1.0, "best_test_acc": 0.5})
    snapshot = first.get_state()  # Tune's last snapshot comes before on_experiment_end
    first.on_experiment_end([trial])
    path = tmp_path / "mlflow_pending.json"
    assert path.is_file()

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    resumed = tracking_callback(uri, tmp_path, retry_s=0.0)
    resumed.set_state(snapshot)
    resumed.setup(total_num_samples=1)
    assert resumed.pending == 0 and not path.exists()
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    child = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(child) == 1 and child[0].data.tags["ckd.status"] == "interrupted"
    history = client.get_metric_history(child[0].info.run_id, "best_test_acc")
    assert [(m.step, m.value) for m in history] == [(1, 0.5)]


def test_the_summary_counts_trials_only_the_journal_holds(tmp_path: Path, tracking_callback):
    """A restored experiment lacks the trials that ended after its snapshot (and asks no more past
    the budget): the parent run still ends FINISHED, with the best of all trials."""
    import optuna
    import yaml
    from mlflow import MlflowClient

    from ckd_search.search.optuna_search import RAY_TRIAL_ATTR
    from ckd_search.search.optuna_search import journal_storage

    journal = tmp_path / "optuna.journal"
    study = optuna.create_study(study_name="study-1", storage=journal_storage(journal), direction="maximize")
    for trial_id, k, value in (("a1", 1.0, 0.6), ("b2", 3.0, 0.9)):
        study.enqueue_trial({"kd.k": k})
        trial = study.ask({"kd.k": optuna.distributions.FloatDistribution(0.1, 10.0)})
        trial.set_user_attr(RAY_TRIAL_ATTR, trial_id)
        study.tell(trial, value)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cb = tracking_callback(uri, tmp_path, journal_path=journal, base_config={"run.epochs": 2, "kd.e_th": 1.0})
    cb.setup(total_num_samples=2)
    known = SimpleNamespace(
        trial_id="a1", config={"run.epochs": 2, "kd.k": 1.0}, last_result={}, status="RUNNING"
    )
    cb.on_trial_start(0, [known], known)
    known.last_result = {"epoch": 2.0, "best_test_acc": 0.6}
    cb.on_trial_result(0, [known], known, known.last_result)
    cb.on_trial_complete(0, [known], known)
    cb.on_experiment_end([known])  # b2 ended after the snapshot this experiment was restored from

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    (parent,) = [r for r in runs if not r.data.tags.get("mlflow.parentRunId")]
    assert parent.info.status == "FINISHED" and parent.data.tags["ckd.status"] == "finished"
    assert parent.data.tags["ckd.best_trial_id"] == "b2"
    assert parent.data.metrics["best_best_test_acc"] == pytest.approx(0.9)
    path = client.download_artifacts(parent.info.run_id, "best_config.yaml", str(tmp_path))
    best = yaml.safe_load(Path(path).read_text())
    assert best["kd"]["k"] == pytest.approx(3.0) and best["kd"]["e_th"] == 1.0 and best["run"]["epochs"] == 2


def test_a_call_mlflow_refuses_for_good_is_dropped_and_the_rest_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracking_callback
):
    cb = tracking_callback("sqlite:///unused.db", tmp_path)
    sent: list[int] = []

    class Refused(Exception):
        error_code = "INVALID_PARAMETER_VALUE"

    def execute(op: dict) -> None:
        if op["n"] == 0:
            raise Refused("param value changed")
        sent.append(op["n"])

    monkeypatch.setattr(cb, "_execute", execute)
    for n in range(3):
        cb._queue({"op": "params", "n": n})
    assert cb._flush(force=True)
    assert sent == [1, 2] and cb.pending == 0


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("file:///tmp/mlruns", "refuses file stores"),
        ("/tmp/mlruns", "refuses file stores"),
        ("ftp://host/x", "expected http(s)://, sqlite:///"),
    ],
)
def test_tracking_uris_mlflow_cannot_use_are_refused(uri, needle):
    from ckd_search.errors import UserError
    from ckd_search.search.tracking import check_tracking_uri

    with pytest.raises(UserError, match=rf"--mlflow-uri {uri}: .*{re.escape(needle)}"):
        check_tracking_uri(uri)
    check_tracking_uri("sqlite:///x.db")
    check_tracking_uri("http://127.0.0.1:5000")


def test_summary_rows_of_a_multi_objective_journal_count_their_epochs(tmp_path):
    # multi-objective trials keep no intermediate values; the searcher records epochs_run instead
    import optuna

    from ckd_search.search.optuna_search import RAY_TRIAL_ATTR
    from ckd_search.search.optuna_search import journal_storage
    from ckd_search.search.tracking import MlflowTrackingCallback

    journal = tmp_path / "optuna.journal"
    study = optuna.create_study(
        study_name="mo", storage=journal_storage(journal), directions=["maximize", "minimize"]
    )
    trial = study.ask()
    trial.set_user_attr(RAY_TRIAL_ATTR, "t1")
    trial.set_user_attr("epochs_run", 3)
    study.tell(trial, [0.8, 1e6])
    cb = MlflowTrackingCallback(
        f"sqlite:///{tmp_path}/mlflow.db",
        "exp",
        "mo",
        tmp_path,
        ["best_test_acc", "sops_per_sample"],
        ["max", "min"],
        max_t=3,
        journal_path=str(journal),
    )
    (row,) = cb._journal_rows(set())
    assert row["trial_id"] == "t1" and row["epochs_run"] == 3 and row["sops_per_sample"] == 1e6


def test_a_parent_run_cut_off_after_its_creation_gets_its_params_on_the_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracking_callback
):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cb = tracking_callback(uri, tmp_path, retry_s=0.0, search_params={"gpus": 16})
    log_params = cb._log_params
    calls = []

    def flaky(run_id: str, params: dict) -> None:  # the connection drops right after create_run
        calls.append(run_id)
        if len(calls) == 1:
            raise ConnectionError("reset by peer")
        log_params(run_id, params)

    monkeypatch.setattr(cb, "_log_params", flaky)
    cb._queue({"op": "parent_start"})
    assert not cb._flush(force=True) and cb.pending == 1
    assert cb._flush(force=True) and cb.pending == 0
    runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("exp").experiment_id])
    (parent,) = runs  # one parent run, not a second one made by the retry
    assert parent.data.params == {"gpus": "16"} and calls == [parent.info.run_id] * 2


def test_a_restart_closes_runs_of_trials_the_journal_ended_instead_of_orphaning_them(tmp_path: Path):
    import optuna
    from mlflow import MlflowClient

    from ckd_search.search.optuna_search import RAY_TRIAL_ATTR
    from ckd_search.search.optuna_search import journal_storage
    from ckd_search.search.tracking import MlflowTrackingCallback

    journal = tmp_path / "optuna.journal"
    study = optuna.create_study(study_name="s", storage=journal_storage(journal), direction="maximize")
    trial = study.ask()
    trial.set_user_attr(RAY_TRIAL_ATTR, "ended")
    study.tell(trial, 0.7)  # the driver died before MLflow heard of this
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cb = MlflowTrackingCallback(
        uri, "exp", "s", tmp_path, ["best_test_acc"], ["max"], max_t=2, journal_path=str(journal)
    )
    cb._queue({"op": "parent_start"})
    assert cb._flush(force=True)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("exp").experiment_id
    runs = {}
    for trial_id in ("ended", "lost"):
        tags = {"mlflow.parentRunId": cb.parent_run_id, "ckd.trial_id": trial_id}
        runs[trial_id] = client.create_run(exp, tags=tags).info.run_id
    cb._reconcile(set())
    ended, lost = (client.get_run(runs[t]) for t in ("ended", "lost"))
    assert (ended.info.status, ended.data.tags["ckd.status"]) == ("FINISHED", "completed")
    assert (lost.info.status, lost.data.tags["ckd.status"]) == ("KILLED", "orphaned")


def test_the_summary_best_breaks_ties_by_the_lower_trial_id():
    from ckd_search.search.tracking import _best

    rows = [
        {"trial_id": t, "status": "completed", "acc": v}
        for t, v in (("x_00002", 0.9), ("x_00000", 0.9), ("x_00001", 0.4))
    ]
    assert _best(rows, "acc", "max")["trial_id"] == "x_00000"
    assert _best(rows[::-1], "acc", "max")["trial_id"] == "x_00000"
    assert _best(rows, "acc", "min")["trial_id"] == "x_00001"
