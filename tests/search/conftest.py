"""Fixtures for the search tests: tiny real configs, space files, Ray and cache hygiene."""

from __future__ import annotations

import os
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

#: A tiny real engine config: a few seconds per epoch on one CPU thread.
TINY = {
    "data.limit": 200,
    "data.size": 16,
    "data.timesteps": 2,
    "model.width": 0.0625,
    "teacher.epochs": 1,
    "run.epochs": 2,
    "optim.batch_size": 32,
}


@pytest.fixture(scope="session", autouse=True)
def _quiet_ray() -> None:
    """Keep Ray's log spam and experiment tables out of the test output."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data/teacher cache for all search tests (the tiny set is built once)."""
    return tmp_path_factory.mktemp("search-cache")


@pytest.fixture(scope="session")
def tiny_fixed(cache_dir: Path) -> dict[str, Any]:
    return {**TINY, "data.cache_dir": str(cache_dir)}


@pytest.fixture
def write_space(tmp_path: Path) -> Callable[..., Path]:
    """``write_space(raw_mapping, name="space.yaml") -> path`` of a YAML file under tmp_path."""

    def write(raw: Any, name: str = "space.yaml") -> Path:
        path = tmp_path / name
        path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))
        return path

    return write


@pytest.fixture
def ray_cleanup() -> Iterator[None]:
    """Shut down any Ray instance a test left initialised in this process."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()
