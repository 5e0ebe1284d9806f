"""Faults inside one trial stay in that trial.

One search of three trials (grid over ``optim.lr``, ``study.max_failures: 2``):

- ``optim.lr: 1.0e+6`` makes the loss non-finite for real; the engine raises ``TrialFailure``; the
  trial ends at once (one failure, no retry), FAIL in Optuna and FAILED in MLflow, both with the
  message;
- another trial runs out of CUDA memory once at epoch 2 (injected: ``CKD_SEARCH_FAULT_INJECT``, no
  GPU here); Tune retries it from its epoch-1 checkpoint and it completes;
- the third runs out of memory at epoch 2 every time: tried 1 + max_failures times, then recorded
  FAIL with the OOM message;

and the search itself finishes.
"""

from __future__ import annotations

import optuna
import pytest

from ckd_search.search.chaos import audit_run

EPOCHS = 3
MAX_FAILURES = 2
LRS = [2.0e-3, 1.0e6, 3.0e-3]


def planned_lrs(space_path) -> list[float]:
    """The grid order the search will use (same seeded sampler, same asks)."""
    from ckd_search.search.optuna_search import make_sampler
    from ckd_search.search.space import SpaceSampler
    from ckd_search.search.space import load_space

    space = load_space(space_path)
    study = optuna.create_study(sampler=make_sampler(space))
    order = []
    for _ in LRS:
        trial = study.ask()
        SpaceSampler(space.params)(trial)
        order.append(trial.params["optim.lr"])
    return order


@pytest.mark.slow
def test_nan_and_oom_stay_in_their_trial(tmp_path, tiny_fixed, helpers, monkeypatch, ray_cleanup):
    from ray.tune import ExperimentAnalysis

    from ckd_search.search.tuner import create_search
    from ckd_search.search.tuner import run_search

    space = helpers.write_space(
        tmp_path,
        {**tiny_fixed, "run.epochs": EPOCHS},
        study={"name": "faults", "num_trials": 3, "seed": 5, "max_failures": MAX_FAILURES},
        space={"optim.lr": {"type": "grid", "values": LRS}},
        searcher="grid",
    )
    order = planned_lrs(space)
    nan_index = order.index(1.0e6)
    once, always = [i for i in range(3) if i != nan_index]
    monkeypatch.setenv("CKD_SEARCH_FAULT_INJECT", f"oom:{once}:2,oom:{always}:2:99")
    monkeypatch.setenv("CKD_SEARCH_FAULT_DIR", str(tmp_path / "faults"))
    settings = create_search(space, out=tmp_path / "run", gpus=0, cpus=2)
    outcome = run_search(settings)
    assert outcome.finished and outcome.counts["complete"] == 1 and outcome.counts["fail"] == 2

    trials = {t.number: t for t in helpers.journal_trials(settings)}
    assert [trials[i].params["optim.lr"] for i in range(3)] == order  # the plan held
    by_lr = {t.params["optim.lr"]: t for t in trials.values()}
    analysis = ExperimentAnalysis(settings.experiment_path)
    tune_trials = {t.trial_id: t for t in analysis.trials}
    audits = audit_run(settings.run_dir)
    _, _, children = helpers.mlflow_runs(settings)
    runs = {r.data.tags["ckd.trial_id"]: r for r in children}
    assert len(runs) == 3

    nan = by_lr[1.0e6]
    nan_id = nan.user_attrs["ray_trial_id"]
    assert nan.state.name == "FAIL" and nan.user_attrs["error"].startswith("TrialFailure: non-finite")
    assert tune_trials[nan_id].status == "ERROR"
    assert tune_trials[nan_id].run_metadata.num_failures == 1  # not retried
    assert [e["event"] for e in audits[nan_id].events] == ["start", "error"]
    run = runs[nan_id]
    assert run.info.status == "FAILED" and run.data.tags["ckd.status"] == "failed"
    assert run.data.tags["ckd.error"] == nan.user_attrs["error"]

    retried = trials[once]
    retried_id = retried.user_attrs["ray_trial_id"]
    assert retried.state.name == "COMPLETE" and sorted(retried.intermediate_values) == [1, 2, 3]
    assert tune_trials[retried_id].status == "TERMINATED"
    assert tune_trials[retried_id].run_metadata.num_failures == 1
    audit = audits[retried_id]
    assert audit.restarts == 1 and audit.resume_points() == [(1, 2)] and audit.lost == []
    assert runs[retried_id].info.status == "FINISHED"

    hopeless = trials[always]
    hopeless_id = hopeless.user_attrs["ray_trial_id"]
    assert hopeless.state.name == "FAIL"
    assert hopeless.user_attrs["error"].startswith("OutOfMemoryError: CUDA out of memory")
    assert tune_trials[hopeless_id].run_metadata.num_failures == 1 + MAX_FAILURES
    events = [e["event"] for e in audits[hopeless_id].events]
    # epoch 1's checkpoint registered; every retry resumes from it and fails at epoch 2 again
    assert events == ["start", "result", "checkpoint", *(["recover", "start"] * MAX_FAILURES), "error"]
    assert audits[hopeless_id].epochs == [1]  # each retry resumed at epoch 2 and failed there
    assert runs[hopeless_id].info.status == "FAILED"
    assert "OutOfMemoryError" in runs[hopeless_id].data.tags["ckd.error"]
