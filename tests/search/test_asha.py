"""PersistentASHA on restore: rung entries of trials Tune did not restore (orphans) are dropped."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from ckd_search.search.asha import PersistentASHA

METRIC = "best_test_acc"


def _trial(trial_id: str, status: str = "RUNNING") -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, status=status)


def _controller(trials: list[SimpleNamespace]) -> SimpleNamespace:
    """The part of Tune's controller wrapper a scheduler may use."""
    return SimpleNamespace(get_trials=lambda: list(trials))


def _asha(path: Path) -> PersistentASHA:
    asha = PersistentASHA(path, max_t=4, grace_period=1, reduction_factor=2)
    asha.set_search_properties(METRIC, "max")
    return asha


def _first_driver(path: Path, scores: dict[str, float]) -> None:
    """A driver that recorded epoch 1 of ``scores``' trials, then died (its state file stays)."""
    asha = _asha(path)
    for trial_id, score in scores.items():
        trial = _trial(trial_id)
        asha.on_trial_add(None, trial)
        asha.on_trial_result(None, trial, {"epoch": 1.0, METRIC: score})


def _entries(path: Path) -> set[str]:
    state = json.loads(path.read_text())
    return {t for bracket in state["brackets"] for _, rec in bracket for t in rec}


def test_orphan_rung_entries_are_dropped_on_restore(tmp_path: Path):
    path = tmp_path / "asha_state.json"
    # t0, t1 are in Tune's snapshot; o1, o2 were created after it and are never resumed
    _first_driver(path, {"t0": 0.5, "t1": 0.6, "o1": 0.9, "o2": 0.95})
    assert _entries(path) == {"t0", "t1", "o1", "o2"}

    restored = _asha(path)
    trials = [_trial("t0", "PENDING"), _trial("t1", "PENDING")]
    for t in trials:
        restored.on_trial_add(None, t)
    controller = _controller(trials)
    assert restored.choose_trial_to_run(controller) is trials[0]
    assert _entries(path) == {"t0", "t1"}  # the file no longer holds the orphans either
    assert {t for _, rec in restored.rungs()[0] for t in rec} == {"t0", "t1"}

    # a new trial is judged against the restored trials only: cut-off 0.55, not 0.75 with orphans
    new = _trial("t9")
    trials.append(new)
    restored.on_trial_add(controller, new)
    assert restored.on_trial_result(controller, new, {"epoch": 1.0, METRIC: 0.7}) == "CONTINUE"


def test_restart_without_snapshot_drops_every_old_entry(tmp_path: Path):
    path = tmp_path / "asha_state.json"
    _first_driver(path, {"a0": 0.9, "a1": 0.8})
    restarted = _asha(path)
    fresh = [_trial("n0", "PENDING")]  # a new Tune experiment: new trial ids
    restarted.on_trial_add(None, fresh[0])
    restarted.on_trial_result(_controller(fresh), fresh[0], {"epoch": 1.0, METRIC: 0.1})
    assert _entries(path) == {"n0"}


def test_entries_of_later_trials_stay_after_the_check(tmp_path: Path):
    path = tmp_path / "asha_state.json"
    _first_driver(path, {"t0": 0.5})
    restored = _asha(path)
    trials = [_trial("t0", "PENDING")]
    restored.on_trial_add(None, trials[0])
    restored.choose_trial_to_run(_controller(trials))
    # the check runs once: a trial created later (not in an old list) keeps its entries
    late = _trial("t5")
    restored.on_trial_add(None, late)
    restored.on_trial_result(_controller(trials), late, {"epoch": 1.0, METRIC: 0.9})
    assert _entries(path) == {"t0", "t5"}


def test_no_state_file_means_nothing_to_drop(tmp_path: Path):
    path = tmp_path / "asha_state.json"
    asha = _asha(path)
    trials = [_trial("t0", "PENDING")]
    asha.on_trial_add(None, trials[0])
    assert asha.choose_trial_to_run(_controller(trials)) is trials[0]
    assert not path.exists()


def _good_and_bad_through_epoch_2(path: Path) -> tuple[PersistentASHA, list[str], list[str]]:
    """Trials "good" and "bad" report epochs 1 and 2; "bad" falls below the epoch-2 cut-off.

    Returns the scheduler and the decisions for good and for bad, epoch by epoch."""
    first = _asha(path)
    good, bad = _trial("good"), _trial("bad")
    for t in (good, bad):
        first.on_trial_add(None, t)
    good_decisions, bad_decisions = [], []
    for epoch, scores in ((1.0, (0.8, 0.9)), (2.0, (0.9, 0.5))):
        good_decisions.append(first.on_trial_result(None, good, {"epoch": epoch, METRIC: scores[0]}))
        bad_decisions.append(first.on_trial_result(None, bad, {"epoch": epoch, METRIC: scores[1]}))
    return first, good_decisions, bad_decisions


def test_a_stop_the_snapshot_missed_is_repeated_when_the_trial_replays(tmp_path: Path):
    path = tmp_path / "asha_state.json"
    first, good_decisions, decisions = _good_and_bad_through_epoch_2(path)
    assert good_decisions == ["CONTINUE", "CONTINUE"]
    # stopped below the epoch-2 cut-off; Optuna and MLflow record it as pruned
    assert decisions == ["CONTINUE", "STOP"]
    # the driver dies before a snapshot with the stop reaches storage: Tune resumes "bad" from its
    # epoch-1 checkpoint as a running trial, and it reports epoch 2 again
    restored = _asha(path)
    trials = [_trial("good", "PENDING"), _trial("bad", "PENDING")]
    for t in trials:
        restored.on_trial_add(None, t)
    controller = _controller(trials)
    restored.choose_trial_to_run(controller)
    assert restored.on_trial_result(controller, trials[1], {"epoch": 2.0, METRIC: 0.5}) == "STOP"
    assert restored._num_stopped == first._num_stopped  # the same stop, not a new one
    # the trial it was compared with goes on as before
    assert restored.on_trial_result(controller, trials[0], {"epoch": 2.0, METRIC: 0.9}) == "CONTINUE"


def test_an_earlier_replayed_epoch_still_continues(tmp_path: Path):
    path = tmp_path / "asha_state.json"
    _good_and_bad_through_epoch_2(path)
    restored = _asha(path)
    trial = _trial("bad", "PENDING")
    restored.on_trial_add(None, trial)
    # resumed from scratch: epoch 1 passed its rung before, so it trains on to epoch 2 ...
    assert restored.on_trial_result(None, trial, {"epoch": 1.0, METRIC: 0.9}) == "CONTINUE"
    # ... where it is stopped as it was
    assert restored.on_trial_result(None, trial, {"epoch": 2.0, METRIC: 0.5}) == "STOP"


def test_restart_keeps_the_entries_of_trials_whose_optuna_record_ended(tmp_path: Path):
    import optuna
    from optuna.trial import TrialState

    from ckd_search.search.optuna_search import RAY_TRIAL_ATTR
    from ckd_search.search.optuna_search import journal_storage

    journal = tmp_path / "optuna.journal"
    study = optuna.create_study(study_name="s", storage=journal_storage(journal), direction="maximize")
    for ray_id, state in (("a0", TrialState.PRUNED), ("a1", None)):  # a1: asked, never ended
        trial = study.ask()
        trial.set_user_attr(RAY_TRIAL_ATTR, ray_id)
        if state is not None:
            study.tell(trial, state=state)
    path = tmp_path / "asha_state.json"
    _first_driver(path, {"a0": 0.9, "a1": 0.8})

    # no whole snapshot: a new Tune experiment runs only what the study lacks; a0 ended, a1 did not
    restarted = PersistentASHA(path, max_t=4, grace_period=1, reduction_factor=2, journal=(str(journal), "s"))
    restarted.set_search_properties(METRIC, "max")
    fresh = [_trial("n0", "PENDING")]
    restarted.on_trial_add(None, fresh[0])
    restarted.on_trial_result(_controller(fresh), fresh[0], {"epoch": 1.0, METRIC: 0.1})
    assert _entries(path) == {"a0", "n0"}  # a0 is the study's, a1's config is re-run by an adopter
