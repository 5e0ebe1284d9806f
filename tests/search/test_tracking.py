"""MLflow tracking on Tune's driver thread: short bounded calls, bounded flushes, settings put back."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

HTTP_ENV = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")


@pytest.fixture
def hanging_server() -> Iterator[str]:
    """An HTTP "server" that accepts connections and never answers (a hung tracking server)."""
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
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
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
    tmp_path: Path, hanging_server: str, no_http_env, tracking_callback
):
    cb = tracking_callback(hanging_server, tmp_path, call_timeout_s=1.0, retry_s=60.0, end_wait_s=0.0)
    start = time.monotonic()
    cb.setup(total_num_samples=1)  # the parent run cannot be created: one attempt, then queued
    assert time.monotonic() - start < 5.0  # was 10 s per attempt (and more with MLflow's retries)
    assert cb.pending == 1
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    trial = SimpleNamespace(trial_id="a1", config={"run.epochs": 2}, last_result={}, status="RUNNING")
    start = time.monotonic()
    cb.on_trial_start(0, [trial], trial)  # within retry_s of the failure: queued, not sent
    assert time.monotonic() - start < 0.5 and cb.pending == 2
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
    cb = tracking_callback("sqlite:///unused.db", tmp_path, flush_budget_s=0.2)
    sent: list[int] = []

    def slow(op: dict) -> None:  # a slow but working server: 0.1 s per call
        time.sleep(0.1)
        sent.append(op["n"])

    monkeypatch.setattr(cb, "_execute", slow)
    for n in range(20):
        cb._queue({"op": "metrics", "n": n})
    start = time.monotonic()
    assert cb._flush()  # nothing failed
    assert time.monotonic() - start < 0.6 and 1 < len(sent) < 20
    assert cb.pending == 20 - len(sent)
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
    for name in ("end_wait_s", "call_timeout_s", "flush_budget_s", "_env_set"):
        del old[name]  # what a snapshot from before these settings holds
    legacy = MlflowTrackingCallback.__new__(MlflowTrackingCallback)
    legacy.__setstate__(old)
    assert (legacy.end_wait_s, legacy.call_timeout_s, legacy.flush_budget_s, legacy._env_set) == (
        60.0,
        3.0,
        2.0,
        [],
    )
    assert legacy.study_name == "study-1"
