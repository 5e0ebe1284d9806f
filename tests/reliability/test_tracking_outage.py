"""The MLflow tracking server goes away mid-search and comes back: no trial dies, the gap is logged,
and every trial's per-epoch metrics end up in the server.

A real ``mlflow server`` (SQLite backend, 127.0.0.1, a free port) tracks a search run by a driver
subprocess. Once trials have reported, the server is SIGKILLed and stays down while the trials
report several more epochs; then it is started again on the same port and store while the search
still runs (the third trial has slow epochs, so the search outlasts the server's restart).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ckd_search.search.chaos import audit_run
from ckd_search.search.chaos import free_port
from ckd_search.search.chaos import kill_session
from ckd_search.search.ledger import LEDGER_FILE
from ckd_search.search.ledger import read_ledger
from ckd_search.search.settings import SearchSettings

EPOCHS = 4


class MlflowServer:
    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.uri = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        exe = Path(sys.executable).with_name("mlflow")
        cmd = [str(exe), "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}"]
        cmd += ["--artifacts-destination", str(self.folder / "artifacts")]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        with open(self.folder / "server.log", "a") as handle:
            self.proc = subprocess.Popen(
                cmd, cwd=self.folder, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.folder / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError((self.folder / "server.log").read_text()[-3000:])

    def kill(self) -> None:
        if self.proc is not None:
            kill_session(self.proc.pid)
            self.proc.wait(timeout=30)
            self.proc = None


@pytest.fixture
def mlflow_server(tmp_path):
    folder = tmp_path / "mlflow-server"
    folder.mkdir()
    server = MlflowServer(folder, free_port())
    server.start()
    yield server
    server.kill()


def results(run: Path) -> int:
    return sum(1 for r in read_ledger(run / LEDGER_FILE) if r["event"] == "result")


@pytest.mark.slow
def test_mlflow_server_outage_mid_search(tmp_path, tiny_fixed, helpers, drivers, mlflow_server):
    space = helpers.write_space(
        tmp_path,
        {**tiny_fixed, "run.epochs": EPOCHS},
        study={"name": "outage", "metric": "train_loss", "mode": "min", "num_trials": 3, "seed": 4},
    )
    run = tmp_path / "run"
    env = {
        **os.environ,
        "CKD_SEARCH_MLFLOW_RETRY_S": "1",
        "CKD_SEARCH_FAULT_INJECT": "delay:*:*:0.5,delay:2:*:4",
        "CKD_SEARCH_FAULT_DIR": str(tmp_path / "faults"),
    }
    args = ["search", "--space", str(space), "--out", str(run), "--gpus", "0", "--cpus", "2"]
    args += ["--mlflow-uri", mlflow_server.uri]
    driver = helpers.start_driver(drivers, args, env, tmp_path / "driver.log")

    deadline = time.monotonic() + 240
    while results(run) < 2 and time.monotonic() < deadline:
        assert driver.alive(), driver.tail()
        time.sleep(0.2)
    mlflow_server.kill()
    down_at = results(run)
    while results(run) < down_at + 4 and driver.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert driver.alive(), "the search should still run while MLflow is down:\n" + driver.tail()
    during = results(run) - down_at
    mlflow_server.start()
    assert driver.alive(), "MLflow came back after the search:\n" + driver.tail()
    assert driver.wait(timeout=300) == 0, driver.tail()

    log = (tmp_path / "driver.log").read_text()
    assert during >= 4 and f"MLflow at {mlflow_server.uri} unreachable" in log
    assert "MLflow reachable again after" in log
    settings = SearchSettings.load(run)
    trials = helpers.journal_trials(settings)
    assert len(trials) == 3 and {t.state.name for t in trials} == {"COMPLETE"}  # no trial died
    audits = audit_run(run)
    client, parents, children = helpers.mlflow_runs(settings)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["ckd.trial_id"] for r in children) == sorted(audits)
    for run_info in children:
        assert run_info.info.status == "FINISHED"
        for metric in ("train_loss", "test_acc", "epoch"):
            history = client.get_metric_history(run_info.info.run_id, metric)
            assert [m.step for m in history] == list(range(1, EPOCHS + 1)), metric
    assert not (run / "mlflow_pending.json").exists()
