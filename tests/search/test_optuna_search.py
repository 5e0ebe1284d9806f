"""The Optuna searcher without Tune: a searcher Tune restores but never sets up still finds its study."""

from __future__ import annotations

import pickle

import optuna
import pytest
from optuna.trial import TrialState

from ckd_search.search.optuna_search import IDS_ATTR
from ckd_search.search.optuna_search import RAY_TRIAL_ATTR
from ckd_search.search.optuna_search import StudySearch
from ckd_search.search.optuna_search import journal_storage
from ckd_search.search.space import load_space

SPACE = {
    "study": {"name": "t", "metric": "train_loss", "mode": "min", "num_trials": 4, "seed": 1},
    "fixed": {"run.epochs": 2},
    "space": {"loss.beta": {"type": "uniform", "low": 0.0, "high": 8.0}},
    "scheduler": {"asha": {"max_t": 2, "grace_period": 1, "reduction_factor": 2}},
}


def as_restored(searcher: StudySearch) -> StudySearch:
    """The searcher as ``Tuner.restore`` hands it back: unpickled from tuner.pkl, never set up."""
    return pickle.loads(pickle.dumps(searcher))


def test_a_searcher_never_set_up_opens_its_study(tmp_path, write_space):
    space = load_space(write_space(SPACE))
    journal = tmp_path / "optuna.journal"
    searcher = as_restored(StudySearch(space, "s", journal, max_t=2))
    params = searcher.suggest("a")
    assert 0.0 <= params["loss.beta"] <= 8.0
    searcher.on_trial_complete("a", {"train_loss": 0.5, "epoch": 2})
    (trial,) = optuna.load_study(study_name="s", storage=journal_storage(journal)).trials
    assert trial.state == TrialState.COMPLETE and trial.value == 0.5  # "min" came from the space


def test_a_restarted_experiment_adopts_the_unfinished_trial(tmp_path, write_space):
    space = load_space(write_space(SPACE))
    journal = tmp_path / "optuna.journal"
    first = StudySearch(space, "s", journal, max_t=2)
    first.set_search_properties("train_loss", "min", {})
    asked = first.suggest("a")  # the driver dies before trial a ends
    # Tune restores the Tuner, cannot read its experiment state and starts the experiment afresh.
    searcher = as_restored(StudySearch(space, "s", journal, max_t=2))
    assert searcher.suggest("b") == asked
    searcher.on_trial_result("b", {"train_loss": 0.9, "epoch": 1})
    searcher.on_trial_complete("b", {"train_loss": 0.4, "epoch": 2})
    (trial,) = optuna.load_study(study_name="s", storage=journal_storage(journal)).trials
    assert trial.state == TrialState.COMPLETE and trial.intermediate_values == {1: 0.9, 2: 0.4}
    assert trial.user_attrs[RAY_TRIAL_ATTR] == "b" and trial.system_attrs[IDS_ATTR] == ["a", "b"]


RANDOM = {**SPACE, "searcher": "random"}


def _run(searcher: StudySearch, trial_id: str, loss: float) -> dict:
    params = searcher.suggest(trial_id)
    searcher.on_trial_complete(trial_id, {"train_loss": loss, "epoch": 2})
    return params


def test_a_restarted_search_draws_past_the_trials_it_has(tmp_path, write_space):
    space = load_space(write_space(RANDOM))
    journal = tmp_path / "optuna.journal"
    first = StudySearch(space, "s", journal, max_t=2)
    first.set_search_properties("train_loss", "min", {})
    earlier = [_run(first, "a", 0.5), _run(first, "b", 0.4)]
    # a fresh sampler seeded with study.seed would propose trial a's parameters again
    restarted = StudySearch(space, "s", journal, max_t=2)
    restarted.set_search_properties("train_loss", "min", {})
    assert restarted.suggest("c") not in earlier


def test_a_restored_search_draws_past_its_snapshot(tmp_path, write_space):
    space = load_space(write_space(RANDOM))
    journal = tmp_path / "optuna.journal"
    first = StudySearch(space, "s", journal, max_t=2)
    first.set_search_properties("train_loss", "min", {})
    _run(first, "a", 0.5)
    first.save(str(tmp_path / "searcher.pkl"))
    after_snapshot = _run(first, "b", 0.4)  # ended before the driver died, after the snapshot
    restored = StudySearch(space, "s", journal, max_t=2)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("c") != after_snapshot  # the snapshot's sampler state would replay b


GRID = {
    **SPACE,
    "study": {**SPACE["study"], "seed": 0},
    "space": {"loss.beta": {"type": "grid", "values": [1.0, 2.0, 3.0, 4.0]}},
    "scheduler": "none",
    "searcher": "grid",
}


@pytest.mark.parametrize("resume", ["restart", "restore"])
def test_a_resumed_grid_search_runs_every_point_once(tmp_path, write_space, resume):
    """The grid's seed orders its points and the trials' grid ids index that order: a resume that
    reseeded it ran 4.0 twice and never 1.0 (seed 0)."""
    space = load_space(write_space(GRID))
    journal = tmp_path / "optuna.journal"
    first = StudySearch(space, "s", journal, max_t=None, num_trials=4)
    first.set_search_properties("train_loss", "min", {})
    first.save(str(tmp_path / "searcher.pkl"))
    ran = [_run(first, t, 1.0)["loss.beta"] for t in ("a", "b")]
    resumed = StudySearch(space, "s", journal, max_t=None, num_trials=4)
    if resume == "restore":
        resumed.restore(str(tmp_path / "searcher.pkl"))
    else:
        resumed.set_search_properties("train_loss", "min", {})
    ran += [_run(resumed, t, 1.0)["loss.beta"] for t in ("c", "d")]
    assert sorted(ran) == [1.0, 2.0, 3.0, 4.0]


def test_a_resumed_search_asks_no_trial_past_its_budget(tmp_path, write_space):
    from ray.tune.search import Searcher

    space = load_space(write_space(RANDOM))
    journal = tmp_path / "optuna.journal"
    first = StudySearch(space, "s", journal, max_t=2, num_trials=2)
    first.set_search_properties("train_loss", "min", {})
    first.save(str(tmp_path / "searcher.pkl"))  # the snapshot knows no trial
    _run(first, "a", 0.5)
    _run(first, "b", 0.4)
    restored = StudySearch(space, "s", journal, max_t=2, num_trials=2)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("c") == Searcher.FINISHED
    assert len(optuna.load_study(study_name="s", storage=journal_storage(journal)).trials) == 2


def test_a_searcher_pickled_by_an_older_version_still_resumes(tmp_path, write_space):
    """Tune restores the searcher pickled in the run's tuner.pkl: one from before the budget and the
    reseeding has neither attribute, and must still restore and suggest."""
    space = load_space(write_space(RANDOM))
    journal = tmp_path / "optuna.journal"
    first = StudySearch(space, "s", journal, max_t=2)
    first.set_search_properties("train_loss", "min", {})
    earlier = _run(first, "a", 0.5)
    first.save(str(tmp_path / "searcher.pkl"))
    old = as_restored(first)
    del old.__dict__["_search_space"], old.__dict__["_num_trials"]
    state = pickle.loads((tmp_path / "searcher.pkl").read_bytes())
    del state["_search_space"], state["_num_trials"]
    (tmp_path / "searcher.pkl").write_bytes(pickle.dumps(state))
    old.restore(str(tmp_path / "searcher.pkl"))
    params = old.suggest("b")
    assert isinstance(params, dict) and params != earlier


@pytest.mark.parametrize("lost_epochs", [1, 3])
def test_an_orphan_that_reported_epochs_is_run_afresh_by_a_new_trial(tmp_path, write_space, lost_epochs):
    """The lost run reported epochs, the new Tune trial trains from epoch 1 and ASHA stops it there:
    Optuna must record its values alone. Adopting the orphan kept the lost run's later epochs (Optuna
    cannot drop them), and the trial was told PRUNED at epoch 3 with the lost run's value."""
    from ckd_search.search.optuna_search import ORPHAN_ATTR
    from ckd_search.search.optuna_search import ended_trials
    from ckd_search.search.optuna_search import superseded_ray_trials

    spec = {**SPACE, "fixed": {"run.epochs": 4}, "scheduler": {"asha": {"max_t": 4, "grace_period": 1}}}
    space = load_space(write_space(spec))
    journal = tmp_path / "optuna.journal"
    first = StudySearch(space, "s", journal, max_t=4)
    first.set_search_properties("train_loss", "min", {})
    asked = first.suggest("a")
    for epoch in range(1, lost_epochs + 1):
        first.on_trial_result("a", {"train_loss": 0.3 / epoch, "epoch": epoch})  # then the driver dies
    searcher = as_restored(StudySearch(space, "s", journal, max_t=4))
    assert searcher.suggest("b") == asked  # the same configuration, run again
    searcher.on_trial_result("b", {"train_loss": 0.9, "epoch": 1})
    searcher.on_trial_complete("b", {"train_loss": 0.9, "epoch": 1})  # stopped by ASHA at epoch 1
    lost, rerun = optuna.load_study(study_name="s", storage=journal_storage(journal)).trials
    assert lost.state == TrialState.FAIL and lost.system_attrs[ORPHAN_ATTR]
    assert rerun.state == TrialState.PRUNED and rerun.intermediate_values == {1: 0.9} and rerun.value == 0.9
    assert rerun.params == lost.params and rerun.user_attrs[RAY_TRIAL_ATTR] == "b"
    assert set(ended_trials(journal, "s")) == {"b"} and superseded_ray_trials(journal, "s") == {"a"}


def _warm_start(monkeypatch, space, best_config: dict) -> list[dict]:
    """``warm_start_points`` of ``space`` from one earlier search whose best config is given."""
    from types import SimpleNamespace

    from ckd_search.search import tuner

    monkeypatch.setattr(tuner.SearchSettings, "load", staticmethod(lambda run_dir: run_dir))
    monkeypatch.setattr(
        tuner, "read_outcome", lambda settings: SimpleNamespace(best_config=best_config, pareto=[])
    )
    return tuner.warm_start_points(space, ["earlier"])


def test_a_warm_start_value_an_int_parameter_cannot_take_is_dropped(tmp_path, write_space, monkeypatch):
    """An earlier uniform search's 3.7 for what is now an int: Optuna would run 3 and store 3.7."""
    ints = {**SPACE, "space": {"kd.temperature": {"type": "int", "low": 1, "high": 8}}}
    space = load_space(write_space(ints))
    assert _warm_start(monkeypatch, space, {"kd.temperature": 3.7}) == []
    assert _warm_start(monkeypatch, space, {"kd.temperature": 3.0}) == [{"kd.temperature": 3}]


def test_a_grid_search_refuses_a_warm_start(tmp_path, write_space, monkeypatch):
    from ckd_search.errors import UserError

    with pytest.raises(UserError, match="searcher: grid, which runs every grid point anyway"):
        _warm_start(monkeypatch, load_space(write_space(GRID)), {"loss.beta": 2.0})
