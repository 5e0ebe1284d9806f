"""Optuna as the Ray Tune searcher: seeded samplers, a journal file, ASHA stops recorded as PRUNED.

Storage (pitfall 3). The study lives in an Optuna ``JournalStorage`` file (``RUN_DIR/optuna.journal``):
one append-only file, no SQLite locking, NFS-safe, and ``optuna-dashboard RUN_DIR/optuna.journal``
opens it live. Like an RDB it is written outside Tune's experiment snapshot, so after a driver crash
a restored searcher (the snapshot's copy) can try to tell a trial that the journal already records
as finished; Ray's ``OptunaSearch`` then raises ``UpdateFinishedTrialError`` (pitfall 3). This
subclass makes every write idempotent instead: it reads the trial's state from storage first and
keeps the first record (``tell(skip_if_finished=True)``, intermediate values reported once per
step). Journal trials that the snapshot never heard of (asked after the last snapshot; Tune will
never resume them, since a restored search gives its new trials new ids) are *adopted*: the next
trials the restored search asks for reuse them, parameters and all (Optuna returns a stored
parameter instead of sampling it again), so the study holds exactly one Optuna trial per Tune trial
and no sampled configuration is lost. The ids a trial had are kept in the system attribute
``ckd:ray_trial_ids``. An orphan that reported epochs is not adopted but ended as orphaned, its
parameters queued for a fresh trial (Optuna cannot drop the lost run's values, see
``_collect_orphans``). An orphan nobody adopts by the end of the search is marked FAIL with the
system attribute ``ckd:orphaned`` (:func:`fail_orphans`). Enqueued warm-start points (WAITING) are
left alone. In-memory storage would restore cleanly too, but nobody could open it while a search
runs, and a crash would lose it.

Pruning (pitfall 1). Ray's ``OptunaSearch`` tells COMPLETE whenever the last result has the metric,
so trials that ASHA stopped after one epoch look finished. Here each epoch's metric is reported as
an intermediate value at ``step=epoch``, and a trial that stopped before its budget
(:func:`ckd_search.search.outcome.classify`) is told PRUNED (its value is then the last
intermediate value, as Optuna does), a trial that raised is told FAIL with its one-line error in the
user attribute ``error``.

Metric and mode come from ``TuneConfig`` (house style); a multi-objective study passes its metric
and mode lists to the searcher itself (Tune's ``TuneConfig`` takes one metric).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from ckd_search.search.outcome import COMPLETED
from ckd_search.search.outcome import EPOCH_KEY
from ckd_search.search.outcome import FAILED
from ckd_search.search.outcome import PRUNED
from ckd_search.search.outcome import classify
from ckd_search.search.outcome import finite
from ckd_search.search.space import SearchSpace
from ckd_search.search.space import SpaceSampler

log = logging.getLogger(__name__)
ORPHAN_ATTR = "ckd:orphaned"
IDS_ATTR = "ckd:ray_trial_ids"
RAY_TRIAL_ATTR = "ray_trial_id"
ERROR_ATTR = "error"


def make_sampler(space: SearchSpace, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The sampler named in ``searcher``, seeded with ``seed`` (default ``study.seed``).

    TPE is Optuna 5's default (multivariate, constant liar: parallel ``ask()`` calls see running
    trials as bad, so concurrent trials spread out); with conditions it groups the conditional
    sub-spaces (``group=True``) so multivariate TPE still models them.
    """
    seed = space.study.seed if seed is None else seed
    opts = dict(space.searcher.options)
    kind = space.searcher.type
    if kind == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=int(opts.get("n_startup_trials", 10)),
            group=space.has_conditions,
            constant_liar=True,
        )
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        grid = {p.key: list(p.values) for p in space.params}
        return optuna.samplers.GridSampler(grid, seed=seed)
    if kind == "cmaes":
        return optuna.samplers.CmaEsSampler(
            seed=seed,
            n_startup_trials=int(opts.get("n_startup_trials", 1)),
            sigma0=float(opts["sigma0"]) if "sigma0" in opts else None,
            warn_independent_sampling=False,
        )
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=int(opts.get("population_size", 50)))
    raise ValueError(f"unknown searcher {kind!r}")  # load_space rejects it first


def resumed_seed(seed: int, trials: int) -> int:
    """The sampler seed of a search resumed with ``trials`` trials in its study: past every draw
    made so far, yet the same for the same journal (a resumed search stays reproducible)."""
    return int(np.random.SeedSequence([seed, trials]).generate_state(1)[0])


def journal_storage(path: str | Path) -> JournalStorage:
    """A journal-file storage; ``optuna-dashboard PATH`` opens it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


class StudySearch(OptunaSearch):
    """``OptunaSearch`` over a :class:`SearchSpace` that records ASHA stops as PRUNED.

    Args:
        space: the validated search space (its define-by-run sampler honours conditions).
        study_name: unique per search (pitfall 3: the default name merges sweeps sharing a storage).
        journal_path: the study's journal file.
        max_t: ASHA's ``max_t`` (None without ASHA): the budget that counts as complete.
        warm_start: parameter sets enqueued before the sampler's own (``--warm-start-from``).
        num_trials: the study's trial budget (default ``study.num_trials``); a restored experiment
            asks no new trial past it (its snapshot may predate trials the journal holds).
    """

    def __init__(
        self,
        space: SearchSpace,
        study_name: str,
        journal_path: str | Path,
        max_t: int | None,
        warm_start: list[dict[str, Any]] | None = None,
        num_trials: int | None = None,
    ) -> None:
        multi = space.study.multi_objective
        super().__init__(
            space=None,
            # TuneConfig passes the same metric and mode to set_search_properties; they are given
            # here too because Tune skips that call when it restores a Tuner (``Tuner.restore``
            # passes no param_space), and a restore can fall back to a fresh experiment.
            metric=list(space.study.metrics) if multi else space.study.metric,
            mode=list(space.study.modes) if multi else space.study.mode,
            points_to_evaluate=list(warm_start or []),
            sampler=make_sampler(space),
            study_name=study_name,
            storage=journal_storage(journal_path),
        )
        self._space = SpaceSampler(space.params)
        self._search_space = space
        self._num_trials = space.study.num_trials if num_trials is None else int(num_trials)
        self._max_t = max_t
        self._journal_path = str(journal_path)
        self._orphans: list[int] = []  # journal trial ids (storage ids) waiting to be adopted

    # -- set-up -------------------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """Take metric/mode from ``TuneConfig`` (single objective) and open the study."""
        if not isinstance(self._metric, list):
            self._metric = metric or self._metric
            self._mode = mode or self._mode
        self._open_study()
        return True

    def _open_study(self) -> optuna.Study:
        """Create or load the study (once).

        Normally ``set_search_properties`` opens it, or a restored snapshot brings it. When Tune
        restores a Tuner but then starts the experiment afresh (its own snapshot unreadable), neither
        happens, so the first use opens it here, with the same restart rules.
        """
        if self._ot_study is None:
            storage = self._storage
            assert storage is not None
            existing = self._study_name in optuna.get_all_study_names(storage)
            if existing:
                self._points_to_evaluate = []  # a restart: the warm-start points are queued already
            self._setup_study(self._mode or "max")
            if existing:  # the Tune experiment starts again (no snapshot): every RUNNING trial is stale
                self._collect_orphans()
                self._advance_sampler()
        assert self._ot_study is not None
        return self._ot_study

    @property
    def study(self) -> optuna.Study:
        return self._open_study()

    def _advance_sampler(self) -> None:
        """Reseed the sampler past the draws the study has used (search.md pitfall 12).

        A restart builds the sampler from ``study.seed`` again and a restore brings back the
        snapshot's; both would replay the random draws of the trials asked since, so the resumed
        search would propose configurations it has already run.
        """
        study = self._open_study()
        space = getattr(self, "_search_space", None)
        if space is None:  # pickled by an older version: no seed to derive from, a fresh one then
            study.sampler.reseed_rng()
            return
        trials = len(study.get_trials(deepcopy=False))
        # Not a grid: its seed shuffles the grid, and the grid ids its trials hold index that order.
        # Reseeded, they would name other points (some run twice, others never); a grid draws no
        # random values that a restart could replay anyway.
        seed = space.study.seed if space.searcher.type == "grid" else resumed_seed(space.study.seed, trials)
        self._sampler = make_sampler(space, seed=seed)
        study.sampler = self._sampler

    def _budget_spent(self) -> bool:
        """The study already holds ``num_trials`` trials that ran or run (orphans marked FAIL aside)."""
        budget = getattr(self, "_num_trials", None)  # None: pickled by an older version, Tune counts
        if budget is None:
            return False
        live = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        held = [
            t
            for t in self.study.get_trials(deepcopy=False, states=live)
            if not t.system_attrs.get(ORPHAN_ATTR)
        ]
        return len(held) >= budget

    def suggest(self, trial_id: str) -> dict | None:
        self._open_study()  # before Ray's suggest, which uses the study unchecked
        adopted = trial_id not in self._ot_trials and self._adopt(trial_id)
        if trial_id not in self._ot_trials and self._budget_spent():
            log.info("the study holds its %d trials; no new trial for %s", self._num_trials, trial_id)
            return Searcher.FINISHED  # type: ignore[return-value]  # Ray's sentinel string
        params = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and (adopted or RAY_TRIAL_ATTR not in ot_trial.user_attrs):
            ot_trial.set_user_attr(RAY_TRIAL_ATTR, trial_id)
            # only an adopted trial has earlier ids; a new one would cost a journal read for nothing
            ids = list(self._stored(ot_trial).system_attrs.get(IDS_ATTR, [])) if adopted else []
            self.study._storage.set_trial_system_attr(ot_trial._trial_id, IDS_ATTR, [*ids, trial_id])
        return params

    def _adopt(self, trial_id: str) -> bool:
        """Hand the oldest orphan (still RUNNING) to the new Tune trial ``trial_id``."""
        storage = self.study._storage
        while self._orphans:
            orphan = self._orphans.pop(0)
            frozen = storage.get_trial(orphan)
            if frozen.state != TrialState.RUNNING:
                continue
            self._ot_trials[trial_id] = optuna.Trial(self.study, orphan)
            log.info(
                "Optuna trial %d (asked before the driver stopped, never run to the end) is adopted by "
                "trial %s with the same parameters",
                frozen.number,
                trial_id,
            )
            return True
        return False

    # -- results ------------------------------------------------------------------------------
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Report the metric as an intermediate value at ``step=epoch`` (once per step)."""
        if isinstance(self._metric, list) or trial_id in self._completed_trials:
            return  # Optuna keeps no intermediate values for multi-objective studies
        ot_trial = self._ot_trials.get(trial_id)
        value = finite(result.get(self._metric))
        if ot_trial is None or value is None or EPOCH_KEY not in result:
            return
        step = int(result[EPOCH_KEY])
        frozen = self._stored(ot_trial)
        if frozen.state.is_finished() or step in frozen.intermediate_values:
            return  # replayed after a restore: the journal already has it
        ot_trial.report(value, step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Tell COMPLETE, PRUNED (stopped before the budget) or FAIL; never twice."""
        if trial_id in self._completed_trials:
            return
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return
        self._completed_trials.add(trial_id)
        frozen = self._stored(ot_trial)
        if frozen.state.is_finished():
            log.info(
                "Optuna trial %d of %s is already %s; keeping that record",
                frozen.number,
                trial_id,
                frozen.state.name,
            )
            return
        if result:
            # Tune hands the last result (stopped or done) to on_trial_complete, not on_trial_result.
            self._completed_trials.discard(trial_id)
            self.on_trial_result(trial_id, result)
            self._completed_trials.add(trial_id)
        outcome = classify(result, error=error, max_t=self._max_t)
        values: list[float] | float | None = None
        if outcome == COMPLETED:
            assert result is not None
            metrics = self._metric if isinstance(self._metric, list) else [self._metric]
            found = [finite(result.get(m)) for m in metrics]
            if any(v is None for v in found):
                log.warning("trial %s finished without a finite %s; recorded as FAIL", trial_id, metrics)
                outcome = FAILED
            else:
                values = [float(v) for v in found if v is not None]
                values = values if isinstance(self._metric, list) else values[0]
        state = {COMPLETED: TrialState.COMPLETE, FAILED: TrialState.FAIL}.get(outcome, TrialState.PRUNED)
        if state == TrialState.PRUNED and isinstance(self._metric, list):
            state = TrialState.FAIL if error else TrialState.PRUNED
        try:
            if result and EPOCH_KEY in result:
                ot_trial.set_user_attr("epochs_run", int(result[EPOCH_KEY]))
            if state == TrialState.FAIL:
                from ckd_search.search.faults import last_error

                message = last_error(trial_id) or "failed without a finite metric"
                ot_trial.set_user_attr(ERROR_ATTR, message)
            self.study.tell(ot_trial, values, state=state, skip_if_finished=True)
        except (ValueError, RuntimeError) as exc:  # e.g. a value Optuna refuses
            if self._stored(ot_trial).state.is_finished():
                # GridSampler.after_trial calls study.stop() once the grid is used up, which
                # raises outside study.optimize; tell has stored the state regardless.
                log.debug("Optuna trial of %s recorded; sampler hook said: %s", trial_id, exc)
            else:
                log.warning("could not record trial %s in Optuna: %s", trial_id, exc)

    def _stored(self, ot_trial: optuna.Trial) -> optuna.trial.FrozenTrial:
        return self.study._storage.get_trial(ot_trial._trial_id)

    # -- restore ------------------------------------------------------------------------------
    def restore(self, checkpoint_path: str) -> None:
        """Restore the snapshot, then collect the journal trials it does not know (orphans)."""
        super().restore(checkpoint_path)
        if self._ot_study is None:
            return
        self._collect_orphans()
        self._advance_sampler()

    def _collect_orphans(self) -> None:
        """Journal trials asked after the snapshot (RUNNING, no live Tune trial): the next new Tune
        trials adopt those that reported no epoch. One that did is ended (FAIL, ``ckd:orphaned``)
        and its parameters queued for a fresh Optuna trial: its adopter would train from epoch 1
        again, and Optuna cannot drop the lost run's values, so an adopter stopped earlier than the
        lost run got would be recorded at the lost run's last epoch, with its value."""
        known = {t._trial_id for t in self._ot_trials.values()}
        storage = self.study._storage
        self._orphans = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t._trial_id in known:
                continue
            if not t.intermediate_values:
                self._orphans.append(t._trial_id)
                continue
            mark_orphaned(storage, t)
            self.study.enqueue_trial(t.params, skip_if_exists=False)
            log.info(
                "Optuna trial %d (asked before the driver stopped, %d epoch(s) reported) ends as orphaned; "
                "a new trial runs its parameters from the start",
                t.number,
                len(t.intermediate_values),
            )
        if self._orphans:
            log.info(
                "%d Optuna trial(s) were asked after the last snapshot; the next trials adopt them",
                len(self._orphans),
            )


def ended_trials(journal_path: str | Path, study_name: str) -> dict[str, optuna.trial.FrozenTrial]:
    """Tune trial id -> Optuna record of the study's ended trials (orphans aside): their records are
    final, whichever Tune experiment ran them (a restart without a snapshot leaves them out of the
    new one; a restore, those that ended after its snapshot)."""
    if not Path(journal_path).is_file():
        return {}
    study = optuna.load_study(study_name=study_name, storage=journal_storage(journal_path))
    return {
        str(t.user_attrs[RAY_TRIAL_ATTR]): t
        for t in study.get_trials(deepcopy=False)
        if t.state.is_finished() and RAY_TRIAL_ATTR in t.user_attrs and not t.system_attrs.get(ORPHAN_ATTR)
    }


def superseded_ray_trials(journal_path: str | Path, study_name: str) -> set[str]:
    """Tune trial ids that no longer stand for a trial of the study: the ids an adopting Tune trial
    replaced (``IDS_ATTR`` lists them all, the current one last) and those of orphaned trials."""
    study = optuna.load_study(study_name=study_name, storage=journal_storage(journal_path))
    stale: set[str] = set()
    for trial in study.get_trials(deepcopy=False):
        current = trial.user_attrs.get(RAY_TRIAL_ATTR)
        stale.update(str(i) for i in trial.system_attrs.get(IDS_ATTR, []) if i != current)
        if trial.system_attrs.get(ORPHAN_ATTR) and current:
            stale.add(str(current))
    return stale


def trial_status(trial: optuna.trial.FrozenTrial) -> str:
    """completed / pruned / failed of an ended Optuna trial."""
    return {TrialState.COMPLETE: COMPLETED, TrialState.PRUNED: PRUNED}.get(trial.state, FAILED)


def mark_orphaned(storage: optuna.storages.BaseStorage, trial: optuna.trial.FrozenTrial) -> None:
    """End ``trial`` as FAIL with ``ckd:orphaned``: a record no Tune trial stands for, left out of
    the budget, the outcome, export and analyze."""
    storage.set_trial_system_attr(trial._trial_id, ORPHAN_ATTR, True)
    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def fail_orphans(journal_path: str | Path, study_name: str, keep: frozenset[str] = frozenset()) -> int:
    """Mark unfinished journal trials whose Tune trial is not in ``keep`` FAIL (``ckd:orphaned``).

    Called when a search has ended with every Tune trial finished: a RUNNING Optuna trial then
    belongs to no live Tune trial, and a WAITING one (a queued warm-start point) will never run.
    Returns how many were marked.
    """
    storage = journal_storage(journal_path)
    study = optuna.load_study(study_name=study_name, storage=storage)
    marked = 0
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        if frozen.user_attrs.get(RAY_TRIAL_ATTR) in keep:
            continue
        mark_orphaned(storage, frozen)
        log.info("Optuna trial %d belongs to no Tune trial; marked FAIL (orphaned)", frozen.number)
        marked += 1
    return marked
