"""ASHA on ``epoch`` whose rungs survive ``Tuner.restore`` (pitfall 4).

Tune snapshots trials, searcher and callbacks but not the scheduler: a restored ASHA starts with
empty rungs and lets every resumed trial through the next milestone. :class:`PersistentASHA` writes
its rungs (milestone -> {trial id: score}) and its early stops (trial id -> epoch) to a JSON file in
the run directory whenever they change and reloads that file when Tune hands it the metric
(``set_search_properties`` runs at the start of every ``fit``, fresh or restored). The file is
written atomically; trial ids are kept by Tune across restores, so a resumed trial meets the rungs it
was judged against.

The file can be ahead of Tune's snapshot: a driver killed between a result and the next snapshot
that reaches storage (Tune uploads snapshots in the background, so under load the stored one can lag
by seconds). A replayed result does not enter a rung twice (ASHA records a trial once per rung). A
trial that ASHA stopped after the stored snapshot is resumed by Tune as if it were still running;
when it replays the epoch it was stopped at, it is stopped again. Plain ASHA would let it through
(a trial already recorded at a milestone counts as promoted), so it would train past a cut-off it
failed, after Optuna and MLflow had already recorded it as pruned.

Entries of trials that Tune does not restore (orphans: created after the last snapshot, or by a
driver that stopped before the first one) are dropped once the restored trials are known (the
scheduler's first call with Tune's controller): such a trial never runs again, and its configuration
is re-run from epoch 1 by the trial that adopts its Optuna record (or a fresh one with its
parameters), so keeping its results would
count that configuration twice in the rung cut-offs. A trial whose Optuna record has ended is no
orphan, even when the Tune experiment lacks it (a restart without a whole snapshot runs only the
trials the study lacks): its results stay, as the study's other trials were judged against them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler

from ckd_search.search.outcome import EPOCH_KEY
from ckd_search.search.outcome import finite
from ckd_search.storage import atomic_write_text

log = logging.getLogger(__name__)
STATE_VERSION = 1


class PersistentASHA(ASHAScheduler):
    """``ASHAScheduler(time_attr="epoch")`` persisting its rungs to ``state_path``.

    Metric and mode come from ``TuneConfig`` only (house style), so they are not arguments here.
    """

    def __init__(
        self,
        state_path: str | Path,
        *,
        max_t: int,
        grace_period: int,
        reduction_factor: float,
        journal: tuple[str, str] | None = None,
    ) -> None:
        """``journal``: (Optuna journal path, study name), to keep the entries of ended trials."""
        super().__init__(
            time_attr=EPOCH_KEY, max_t=max_t, grace_period=grace_period, reduction_factor=reduction_factor
        )
        self._state_path = str(state_path)
        self._journal = journal
        self._stopped: dict[str, float] = {}  # trial id -> epoch ASHA stopped it at (before max_t)
        # True from loading saved rungs until the restored trials are known (see _drop_orphans).
        self._orphans_unchecked = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Tune unpickles the scheduler from tuner.pkl on restore, possibly written by older code.
        self.__dict__.update({"_stopped": {}, "_orphans_unchecked": False, "_journal": None, **state})

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        ok = super().set_search_properties(metric, mode, **spec)
        self._orphans_unchecked = self.load_state()
        return ok

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        # Tune restores every trial of its snapshot (on_trial_add) before its first scheduling call.
        self._drop_orphans(tune_controller)
        return super().choose_trial_to_run(tune_controller)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._drop_orphans(tune_controller)
        epoch = _epoch(result)
        stopped_at = self._stopped.get(trial.trial_id)
        if stopped_at is not None and epoch is not None and epoch >= stopped_at:
            log.info(
                "trial %s replayed epoch %g after a restore; ASHA stopped it there before",
                trial.trial_id,
                epoch,
            )
            return self.STOP
        before = self._fingerprint()
        action = super().on_trial_result(tune_controller, trial, result)
        if action == self.STOP and epoch is not None and epoch < self._max_t:
            self._stopped[trial.trial_id] = epoch
        if self._fingerprint() != before:
            self.save_state()
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._drop_orphans(tune_controller)
        before = self._fingerprint()
        super().on_trial_complete(tune_controller, trial, result)
        if self._fingerprint() != before:
            self.save_state()

    def _drop_orphans(self, tune_controller: Any) -> None:
        """Once after loading saved rungs: drop entries of trials the restored experiment lacks."""
        if not self._orphans_unchecked or tune_controller is None:
            return
        self._orphans_unchecked = False
        known = {t.trial_id for t in tune_controller.get_trials()}
        if self._journal is not None:
            from ckd_search.search.optuna_search import ended_trials

            known |= set(ended_trials(*self._journal))
        removed = self.drop_unknown(known)
        if removed:
            log.info(
                "ASHA: dropped %d rung entries of %d trial(s) Tune did not restore (orphans): %s",
                sum(removed.values()),
                len(removed),
                ", ".join(sorted(removed)),
            )
            self.save_state()

    def drop_unknown(self, known: set[str]) -> dict[str, int]:
        """Remove rung entries (and stops) of trials not in ``known``; trial id -> rung entries removed."""
        removed: dict[str, int] = {}
        for bracket in self._brackets:
            for _, recorded in bracket._rungs:
                for trial_id in [t for t in recorded if t not in known]:
                    del recorded[trial_id]
                    removed[trial_id] = removed.get(trial_id, 0) + 1
        for trial_id in [t for t in self._stopped if t not in known]:
            del self._stopped[trial_id]
            removed.setdefault(trial_id, 0)
        return removed

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
            "stopped": dict(self._stopped),
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
        self._stopped = {str(k): float(v) for k, v in state.get("stopped", {}).items()}
        log.info("ASHA rungs restored from %s (%d recorded results)", path, self._rung_entries())
        return True

    def _rung_entries(self) -> int:
        return sum(len(rec) for b in self._brackets for _, rec in b._rungs)

    def _fingerprint(self) -> tuple[int, int, int]:
        return self._num_stopped, self._rung_entries(), len(self._stopped)


def _epoch(result: dict) -> float | None:
    return finite(result.get(EPOCH_KEY))
