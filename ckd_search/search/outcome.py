"""How a finished trial ended: completed, pruned (stopped early by ASHA) or failed.

One rule, shared by the Optuna searcher, the MLflow callback, the progress view and the export:
a trial is *completed* when its last reported ``epoch`` reached its budget (``budget_epochs``,
reported by the trainable) or ASHA's ``max_t``, whichever is smaller; a trial that stopped before
that without an error was *pruned*.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

COMPLETED = "completed"
PRUNED = "pruned"
FAILED = "failed"
#: Metric the trainable adds to every report: epochs this trial's config trains for.
BUDGET_KEY = "budget_epochs"
#: Metric the trainable adds to every report: the ASHA/Optuna step (1-based epoch count).
EPOCH_KEY = "epoch"
#: Keys Tune adds to every result; not engine metrics.
TUNE_RESULT_KEYS = frozenset(
    {
        "timestamp",
        "done",
        "training_iteration",
        "trial_id",
        "date",
        "time_this_iter_s",
        "time_total_s",
        "pid",
        "hostname",
        "node_ip",
        "time_since_restore",
        "iterations_since_restore",
        "config",
        "checkpoint_dir_name",
        "should_checkpoint",
        "experiment_tag",
        "episodes_total",
        "timesteps_total",
        "timesteps_since_restore",
    }
)


def budget_epochs(cfg: Any) -> int:
    """Epochs ``engine.fit`` trains this config for (the engine's own rule)."""
    from ckd_search.schedules import Schedules

    return int(Schedules(cfg, 1).budget)


def target_epochs(result: Mapping[str, Any], max_t: int | None) -> float:
    """Epochs a trial must reach to count as completed."""
    budget = float(result.get(BUDGET_KEY, math.inf))
    return min(budget, float(max_t)) if max_t else budget


def classify(result: Mapping[str, Any] | None, *, error: bool, max_t: int | None) -> str:
    """COMPLETED, PRUNED or FAILED for a trial whose last result is ``result``."""
    if error:
        return FAILED
    if not result or EPOCH_KEY not in result:
        return PRUNED
    return COMPLETED if float(result[EPOCH_KEY]) >= target_epochs(result, max_t) else PRUNED


def best_first(value: float, trial_id: Any, mode: str) -> tuple[float, str]:
    """Sort key that puts the best value first ("max" or "min") and, among equal values, the lower
    trial id: the one rule of the summary, the progress line, export and MLflow (analyze too)."""
    return (-value if mode == "max" else value), str(trial_id)


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (NumPy scalars too), else None."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()  # NumPy scalars from pandas / Parquet
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
