"""Notes on a valid search space whose early stopping may not measure what its author expects.

``ckd-search check-space`` prints them, and so do ``search`` and ``demo`` as they start a new
search; none stops a search. Both concern ASHA's rungs against the trials' own epochs: a trial
shorter than the first rung is never judged, and a trial whose KD switch comes after the first rung
is judged while it is still distilling (under ``run.fidelity=truncate`` the schedules span the
planned run, so at epoch ``grace_period`` a trial with a later e_th has not switched yet, whatever
its k).
"""

from __future__ import annotations

from collections.abc import Sequence

from ckd_search.config import Config
from ckd_search.search.outcome import budget_epochs
from ckd_search.search.space import SearchSpace

#: Share of drawn configs switching after the first rung from which the note is printed.
SWITCH_NOTE_SHARE = 0.25


def scheduler_notes(space: SearchSpace, configs: Sequence[Config]) -> list[str]:
    """One line per problem between ASHA's first rung and the drawn ``configs``; none without ASHA."""
    if space.scheduler is None or not configs:
        return []
    rung = space.scheduler.grace_period
    notes = []
    shortest = min(budget_epochs(c) for c in configs)
    if rung > shortest:
        notes.append(
            f"scheduler.asha.grace_period={rung} exceeds the shortest trial ({shortest} epochs): "
            "ASHA never judges those trials"
        )
    switches = [switch_epoch(c) for c in configs]
    timed = [s for s in switches if s is not None]
    later = sum(s > rung for s in timed)
    if timed and later >= SWITCH_NOTE_SHARE * len(timed):
        notes.append(
            f"ASHA's first rung (epoch {rung}) comes before the KD switch (kd.e_th) of {later} of "
            f"{len(timed)} drawn configs: those trials still distil when first judged, so early stops "
            "there cannot weigh e_th or k (bench/fidelity.py measures how well short runs rank configs; "
            "scheduler: none trains every trial in full)"
        )
    stale = _rungs_between_evaluations(space, configs)
    if stale:
        notes.append(
            f"ASHA judges at epochs {', '.join(map(str, stale))}, where some drawn configs "
            "(run.eval_every > 1) have not evaluated: they are compared on a test accuracy up to "
            "eval_every - 1 epochs old (0 before their first evaluation)"
        )
    return notes


def _rungs_between_evaluations(space: SearchSpace, configs: Sequence[Config]) -> list[int]:
    """ASHA's milestones (grace * rf^k below max_t) that are not evaluation epochs of every config,
    where the study's metric comes from the test set (the losses are fresh every epoch)."""
    asha = space.scheduler
    if asha is None or not any(m.endswith("test_acc") for m in space.study.metrics):
        return []
    periods = {c.run.eval_every for c in configs}
    milestones, rung = [], float(asha.grace_period)
    while rung < asha.max_t:
        milestones.append(round(rung))
        rung *= asha.reduction_factor
    return [m for m in milestones if any(m % every for every in periods)]


def search_notes(space: SearchSpace, draws: int = 32) -> list[str]:
    """:func:`scheduler_notes` over ``draws`` random configs of ``space`` (its own seed), for the
    start of a search: one may be launched without ``check-space``."""
    from ckd_search.search.space import check_draws

    return scheduler_notes(space, check_draws(space, draws, seed=space.study.seed))


def switch_epoch(cfg: Config) -> float | None:
    """The epoch at which ``cfg``'s phased KD weight crosses 1/2, where the run's epochs are its clock.

    None where that epoch is not fixed by the config: no KD, a constant or adaptive schedule, schedules
    compressed into the budget, or an e_th counted in iterations (their number per epoch depends on
    the data set's size; the default e_th, half the run, is known in either unit).
    """
    kd = cfg.kd
    if not (cfg.distils and kd.schedule == "phased"):
        return None
    if cfg.run.fidelity != "truncate":
        return None
    if kd.e_th is None:
        return cfg.run.epochs / 2
    return kd.e_th if kd.units == "epoch" else None
