"""Compact console progress of a search: one log line per trial event instead of Ray's tables.

``[search 3 running, 2 pending, 4 done (1 pruned, 0 failed) | best best_test_acc=0.8125 (5f1c_00002)]
trial 5f1c_00006 epoch 2/4 best_test_acc=0.7500``
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune import Callback

from ckd_search.search.outcome import BUDGET_KEY
from ckd_search.search.outcome import COMPLETED
from ckd_search.search.outcome import EPOCH_KEY
from ckd_search.search.outcome import FAILED
from ckd_search.search.outcome import PRUNED
from ckd_search.search.outcome import best_first
from ckd_search.search.outcome import classify
from ckd_search.search.outcome import finite

log = logging.getLogger(__name__)


class ProgressCallback(Callback):
    """Logs trial starts, epochs, stops and the best value so far (driver side).

    "Best" ranks each trial by its latest value, the one Optuna is told when the trial ends, so
    the last line agrees with the search's final summary also for a metric that is not monotone
    (a loss, ``test_acc``). Ties go to the lower trial id, as in ``export`` and ``analyze``.
    """

    def __init__(self, metric: str, mode: str, max_t: int | None, num_trials: int) -> None:
        self.metric = metric
        self.mode = mode
        self.max_t = max_t
        self.num_trials = num_trials
        self._outcomes: dict[str, str] = {}
        self._latest: dict[str, float] = {}  # trial id -> its latest finite value of the metric
        self.max_running = 0

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._outcomes.pop(trial.trial_id, None)
        self._emit(trials, f"trial {trial.trial_id} started")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = finite(result.get(self.metric))
        if value is not None:
            self._latest[trial.trial_id] = value
        epoch = int(result.get(EPOCH_KEY, 0))
        budget = result.get(BUDGET_KEY)
        of = f"/{int(budget)}" if budget else ""
        shown = "nan" if value is None else f"{value:.4f}"
        self._emit(trials, f"trial {trial.trial_id} epoch {epoch}{of} {self.metric}={shown}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        outcome = classify(trial.last_result, error=False, max_t=self.max_t)
        self._outcomes[trial.trial_id] = outcome
        epochs = int((trial.last_result or {}).get(EPOCH_KEY, 0))
        early = "stopped early by ASHA" if self.max_t is not None else "stopped before its budget"
        verb = "finished" if outcome == COMPLETED else early
        self._emit(trials, f"trial {trial.trial_id} {verb} after {epochs} epochs")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from ckd_search.search.faults import is_final_trial
        from ckd_search.search.faults import last_error

        self._outcomes[trial.trial_id] = FAILED
        why = "not retried: a retry would fail the same way"
        if not is_final_trial(trial.trial_id):
            why = "no retries left"
        message = last_error(trial.trial_id) or "see its error.txt"
        self._emit(trials, f"trial {trial.trial_id} FAILED ({why}): {message}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from ckd_search.search.faults import last_error

        limit = getattr(trial, "max_failures", None)
        of = "" if limit is None or limit < 0 else f" of {limit}"
        self._emit(
            trials,
            f"trial {trial.trial_id} failed ({last_error(trial.trial_id) or 'see its error.txt'}); "
            f"retry {trial.num_failures}{of} from its latest checkpoint",
        )

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._emit(trials, "search ended")

    def get_state(self) -> dict[str, Any] | None:
        return {"outcomes": dict(self._outcomes), "latest": dict(self._latest)}

    def set_state(self, state: dict) -> None:
        self._outcomes = dict(state.get("outcomes", {}))
        self._latest = {str(k): float(v) for k, v in state.get("latest", {}).items()}
        if "latest" not in state and state.get("best"):  # saved by an older ckd-search: its best only
            value, trial_id = state["best"]
            self._latest = {str(trial_id): float(value)}

    @property
    def best(self) -> tuple[float, str] | None:
        """(value, trial id) of the best latest value, or None before any trial reported one."""
        if not self._latest:
            return None
        trial_id = min(self._latest, key=lambda t: best_first(self._latest[t], t, self.mode))
        return self._latest[trial_id], trial_id

    def status(self, trials: list) -> str:
        running = sum(1 for t in trials if t.status == "RUNNING")
        pending = sum(1 for t in trials if t.status == "PENDING")
        self.max_running = max(self.max_running, running)
        done = len(self._outcomes)
        pruned = sum(1 for o in self._outcomes.values() if o == PRUNED)
        failed = sum(1 for o in self._outcomes.values() if o == FAILED)
        top = self.best
        best = f"{self.metric}={top[0]:.4f} ({top[1]})" if top else "-"
        return (
            f"[search {running} running, {pending} pending, {done}/{self.num_trials} done "
            f"({pruned} pruned, {failed} failed) | best {best}]"
        )

    def _emit(self, trials: list, event: str) -> None:
        log.info("%s %s", self.status(trials), event)
