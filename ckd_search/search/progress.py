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
from ckd_search.search.outcome import classify
from ckd_search.search.outcome import finite

log = logging.getLogger(__name__)


class ProgressCallback(Callback):
    """Logs trial starts, epochs, stops and the best value so far (driver side)."""

    def __init__(self, metric: str, mode: str, max_t: int | None, num_trials: int) -> None:
        self.metric = metric
        self.mode = mode
        self.max_t = max_t
        self.num_trials = num_trials
        self._outcomes: dict[str, str] = {}
        self._best: tuple[float, str] | None = None
        self.max_running = 0

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._outcomes.pop(trial.trial_id, None)
        self._emit(trials, f"trial {trial.trial_id} started")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = finite(result.get(self.metric))
        if value is not None:
            sign = 1.0 if self.mode == "max" else -1.0
            if self._best is None or sign * value > sign * self._best[0]:
                self._best = (value, trial.trial_id)
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
        return {"outcomes": dict(self._outcomes), "best": self._best}

    def set_state(self, state: dict) -> None:
        self._outcomes = dict(state.get("outcomes", {}))
        best = state.get("best")
        self._best = (float(best[0]), str(best[1])) if best else None

    def status(self, trials: list) -> str:
        running = sum(1 for t in trials if t.status == "RUNNING")
        pending = sum(1 for t in trials if t.status == "PENDING")
        self.max_running = max(self.max_running, running)
        done = len(self._outcomes)
        pruned = sum(1 for o in self._outcomes.values() if o == PRUNED)
        failed = sum(1 for o in self._outcomes.values() if o == FAILED)
        best = f"{self.metric}={self._best[0]:.4f} ({self._best[1]})" if self._best else "-"
        return (
            f"[search {running} running, {pending} pending, {done}/{self.num_trials} done "
            f"({pruned} pruned, {failed} failed) | best {best}]"
        )

    def _emit(self, trials: list, event: str) -> None:
        log.info("%s %s", self.status(trials), event)
