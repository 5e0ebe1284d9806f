"""Fixtures for the search tests: tiny real configs, space files, Ray and cache hygiene."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data/teacher cache for all search tests (the tiny set is built once)."""
    return tmp_path_factory.mktemp("search-cache")


@pytest.fixture(scope="session")
def tiny_fixed(cache_dir: Path, tiny_search_config: dict[str, Any]) -> dict[str, Any]:
    return {**tiny_search_config, "data.cache_dir": str(cache_dir)}


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


@pytest.fixture
def tracking_callback() -> Callable[..., Any]:
    """``tracking_callback(uri, run_dir, **options)``: the MLflow callback of a two-epoch study that
    maximises best_test_acc (experiment "exp", study "study-1")."""
    from ckd_search.search.tracking import MlflowTrackingCallback

    def make(uri: str, run_dir: Path, **options: Any) -> MlflowTrackingCallback:
        return MlflowTrackingCallback(
            uri,
            "exp",
            "study-1",
            run_dir,
            ["best_test_acc"],
            ["max"],
            max_t=2,
            artifact_location=str(run_dir / "mlartifacts"),
            **options,
        )

    return make
