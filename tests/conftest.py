"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from typing import Any

import pytest

#: A tiny real engine config for searches: well under a second per epoch on one CPU thread.
TINY_SEARCH_CONFIG: dict[str, Any] = {
    "data.limit": 200,
    "data.size": 16,
    "data.timesteps": 2,
    "model.width": 0.0625,
    "teacher.epochs": 1,
    "run.epochs": 2,
    "optim.batch_size": 32,
    "run.device": "cpu",  # the same on a machine with a GPU: tests never depend on one
}


@pytest.fixture(scope="session", autouse=True)
def _quiet_ray() -> None:
    """Keep Ray's log spam, experiment tables and usage reporting out of the tests."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session", autouse=True)
def _matplotlib_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The report's figures build matplotlib's font cache: under the session's tmp, not $HOME."""
    os.environ.setdefault("MPLCONFIGDIR", str(tmp_path_factory.mktemp("matplotlib")))


@pytest.fixture(scope="session")
def tiny_search_config() -> dict[str, Any]:
    """The tiny search config (a copy per session)."""
    return dict(TINY_SEARCH_CONFIG)
