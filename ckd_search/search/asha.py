"""ASHA on ``epoch`` whose rungs survive ``Tuner.restore`` (pitfall 4).

Tune snapshots trials, searcher and callbacks but not the scheduler: a restored ASHA starts with
empty rungs and lets every resumed trial through the next milestone. :class:`PersistentASHA` writes
its rungs (milestone -> {trial id: score}) to a JSON file in the run directory whenever they change
and reloads that file when Tune hands it the metric (``set_search_properties`` runs at the start of
every ``fit``, fresh or restored). The file is written atomically; trial ids are kept by Tune across
restores, so a resumed trial meets the rungs it was judged against. The file can be ahead of Tune's
snapshot (a driver killed between a result and the next snapshot): a replayed result does not enter
a rung twice (ASHA records a trial once per rung), and results of a trial Tune never resumes stay,
as real observations of that configuration.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler

from ckd_search.search.outcome import EPOCH_KEY
from ckd_search.storage import atomic_write_text

log = logging.getLogger(__name__)
STATE_VERSION = 1


class PersistentASHA(ASHAScheduler):
    """``ASHAScheduler(time_attr="epoch")`` persisting its rungs to ``state_path``.

    Metric and mode come from ``TuneConfig`` only (house style), so they are not arguments here.
    """

    def __init__(
        self, state_path: str | Path, *, max_t: int, grace_period: int, reduction_factor: float
    ) -> None:
        super().__init__(
            time_attr=EPOCH_KEY, max_t=max_t, grace_period=grace_period, reduction_factor=reduction_factor
        )
        self._state_path = str(state_path)

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        ok = super().set_search_properties(metric, mode, **spec)
        self.load_state()
        return ok

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        before = self._fingerprint()
        action = super().on_trial_result(tune_controller, trial, result)
        if self._fingerprint() != before:
            self.save_state()
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        before = self._fingerprint()
        super().on_trial_complete(tune_controller, trial, result)
        if self._fingerprint() != before:
            self.save_state()

    # -- persistence --------------------------------------------------------------------------
    def rungs(self) -> list[list[tuple[float, dict[str, float]]]]:
        """Per bracket: (milestone, {trial id: signed score}) from the highest milestone down."""
        return [[(float(m), dict(rec)) for m, rec in b._rungs] for b in self._brackets]

    def save_state(self) -> None:
        state = {
            "version": STATE_VERSION,
            "max_t": self._max_t,
            "num_stopped": self._num_stopped,
            "brackets": [[[m, rec] for m, rec in bracket] for bracket in self.rungs()],
        }
        atomic_write_text(self._state_path, json.dumps(state, indent=1))

    def load_state(self) -> bool:
        """Fill the rungs from ``state_path``; False when there is no (usable) file."""
        path = Path(self._state_path)
        if not path.is_file():
            return False
        try:
            state = json.loads(path.read_text())
            brackets = state["brackets"]
        except (ValueError, KeyError, TypeError):
            log.warning("%s: unreadable ASHA state; starting with empty rungs", path)
            return False
        if len(brackets) != len(self._brackets):
            log.warning(
                "%s: ASHA state has %d brackets, expected %d; ignored",
                path,
                len(brackets),
                len(self._brackets),
            )
            return False
        for bracket, saved in zip(self._brackets, brackets):
            by_milestone = {float(m): rec for m, rec in saved}
            for milestone, recorded in bracket._rungs:
                recorded.clear()
                recorded.update({str(k): float(v) for k, v in by_milestone.get(float(milestone), {}).items()})
        self._num_stopped = int(state.get("num_stopped", 0))
        count = sum(len(rec) for b in self._brackets for _, rec in b._rungs)
        log.info("ASHA rungs restored from %s (%d recorded results)", path, count)
        return True

    def _fingerprint(self) -> tuple[int, int]:
        return self._num_stopped, sum(len(rec) for b in self._brackets for _, rec in b._rungs)
