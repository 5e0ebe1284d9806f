"""Fixtures of the reliability suite: tiny real configs, space files, driver subprocesses, and
readers of what a search left behind (Optuna journal, MLflow store, Tune's per-trial results).

Every search here runs the real training loop (``engine.fit`` on the embedded Digits-DVS set with
tiny settings). Faults are real too: nodes are SIGKILLed (:mod:`ckd_search.search.chaos`), drivers
SIGKILLed, NaN comes from a huge learning rate; only CUDA OOM (no GPU here) and slow epochs (so a
kill lands mid-trial without burning CPU) come from the fault-injection hook
(``CKD_SEARCH_FAULT_INJECT``, :mod:`ckd_search.search.faults`).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.helpers import journal_trials
from tests.helpers import mlflow_runs
from tests.helpers import two_key_space

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_fixed(
    tmp_path_factory: pytest.TempPathFactory, tiny_search_config: dict[str, Any]
) -> dict[str, Any]:
    """The tiny config with one data/teacher cache for the whole suite (built once)."""
    return {**tiny_search_config, "data.cache_dir": str(tmp_path_factory.mktemp("reliability-cache"))}


class Driver:
    """A ``ckd-search`` driver subprocess in its own session (killable with everything it started)."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.handle = open(log_path, "a")  # noqa: SIM115 - closed in wait/kill
        self.handle.write(f"\n=== ckd-search {' '.join(args)}\n")
        self.handle.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ckd_search.cli", *args],
            cwd=REPO,
            env=env,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"driver ran over {timeout:g} s:\n{self.tail()}") from None
        finally:
            self.handle.close()

    def kill(self) -> None:
        """SIGKILL the driver and every process of its session (its local Ray, its trials)."""
        from ckd_search.search.chaos import kill_session

        kill_session(self.proc.pid)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 30
        from ckd_search.search.chaos import session_pids

        while session_pids(self.proc.pid) and time.monotonic() < deadline:
            kill_session(self.proc.pid)
            time.sleep(0.2)
        self.handle.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@pytest.fixture
def drivers() -> Iterator[list[Driver]]:
    """Drivers started by a test; any still running at the end are killed with their sessions."""
    started: list[Driver] = []
    yield started
    for driver in started:
        if driver.alive() or driver.proc.returncode is None:
            driver.kill()
        else:
            from ckd_search.search.chaos import kill_session

            kill_session(driver.proc.pid, signal.SIGKILL)


def start_driver(drivers: list[Driver], args: list[str], env: dict[str, str], log_path: Path) -> Driver:
    driver = Driver(args, env, log_path)
    drivers.append(driver)
    return driver


@pytest.fixture
def helpers() -> SimpleNamespace:
    return SimpleNamespace(
        write_space=two_key_space,
        start_driver=start_driver,
        journal_trials=journal_trials,
        mlflow_runs=mlflow_runs,
        repo=REPO,
    )


@pytest.fixture
def ray_cleanup() -> Iterator[None]:
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()
