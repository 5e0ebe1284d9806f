"""Search building blocks without a search: resources, outcomes, ASHA state, MLflow buffering."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from ckd_search.errors import UserError
from ckd_search.search.outcome import COMPLETED
from ckd_search.search.outcome import FAILED
from ckd_search.search.outcome import PRUNED
from ckd_search.search.outcome import classify
from ckd_search.search.resources import Cluster
from ckd_search.search.resources import plan_trials
from ckd_search.search.space import Resources
from ckd_search.search.space import Study

STUDY = Study("t", num_trials=100)


# --- resources ---------------------------------------------------------------------------------
def test_gpu_budget_sets_concurrency():
    cluster = Cluster(False, ((16.0, 8.0), (16.0, 8.0)))
    plan = plan_trials(Resources(1, 0.25), STUDY, 100, cluster, gpus=4, cpus=None)
    assert plan.max_concurrent == 16 and plan.trial.gpu == 0.25  # 4 GPUs / 0.25
    plan = plan_trials(Resources(1, 0.25), STUDY, 100, cluster, gpus=None, cpus=None)
    assert plan.max_concurrent == 32 and plan.gpu_budget == 16  # CPU-bound: 16 per node


def test_cpu_trials_and_caps():
    cluster = Cluster(True, ((2.0, 0.0),))
    plan = plan_trials(Resources(1, 0.5), STUDY, 100, cluster, gpus=0, cpus=None)
    assert plan.trial.gpu == 0 and plan.max_concurrent == 2
    plan = plan_trials(Resources(0.5, 0), Study("t", max_concurrent=3), 100, cluster, gpus=0, cpus=None)
    assert plan.max_concurrent == 3
    assert plan_trials(Resources(1, 0), STUDY, 1, cluster, gpus=0, cpus=None).max_concurrent == 1


@pytest.mark.parametrize(
    ("wanted", "nodes", "gpus", "match"),
    [
        (Resources(4, 0), ((2.0, 0.0),), 0, "resources.cpu=4 .* PENDING forever"),
        (Resources(1, 0.5), ((2.0, 0.0),), None, "no GPUs; pass --gpus 0"),
        (Resources(1, 0.5), ((2.0, 4.0),), 8, "--gpus 8 is more than the 4 GPUs"),
        (Resources(1, 0.5), ((2.0, 4.0),), 0.25, "less than one trial's share"),
        (Resources(1, 0.5), ((2.0, 4.0),), -1, "must be >= 0"),
    ],
)
def test_requests_that_would_pend_forever_fail_fast(wanted, nodes, gpus, match):
    with pytest.raises(UserError, match=match):
        plan_trials(wanted, STUDY, 10, Cluster(False, nodes), gpus=gpus, cpus=None)


# --- outcomes ----------------------------------------------------------------------------------
def test_classify():
    assert classify({"epoch": 4.0, "budget_epochs": 4.0}, error=False, max_t=None) == COMPLETED
    assert classify({"epoch": 2.0, "budget_epochs": 4.0}, error=False, max_t=4) == PRUNED
    assert classify({"epoch": 2.0, "budget_epochs": 4.0}, error=False, max_t=2) == COMPLETED
    assert classify({"epoch": 3.0, "budget_epochs": 3.0}, error=False, max_t=10) == COMPLETED
    assert classify({"epoch": 3.0}, error=True, max_t=None) == FAILED
    assert classify(None, error=False, max_t=4) == PRUNED


# --- ASHA rungs survive a restore --------------------------------------------------------------
def test_asha_state_round_trip(tmp_path: Path):
    from ckd_search.search.asha import PersistentASHA

    path = tmp_path / "asha.json"
    asha = PersistentASHA(path, max_t=4, grace_period=1, reduction_factor=2)
    asha.set_search_properties("best_test_acc", "max")
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(4)]
    for t in trials:
        asha.on_trial_add(None, t)
    decisions = [
        asha.on_trial_result(None, t, {"epoch": 1.0, "best_test_acc": acc})
        for t, acc in zip(trials, [0.5, 0.6, 0.1, 0.7])
    ]
    assert decisions == ["CONTINUE", "CONTINUE", "STOP", "CONTINUE"]
    assert path.is_file()

    restored = PersistentASHA(path, max_t=4, grace_period=1, reduction_factor=2)
    assert restored.rungs() != asha.rungs()  # empty before Tune hands it the metric
    restored.set_search_properties("best_test_acc", "max")
    assert restored.rungs() == asha.rungs()
    late = SimpleNamespace(trial_id="t9")
    restored.on_trial_add(None, late)
    # judged against the restored rung (0.5, 0.6, 0.1, 0.7), not waved through an empty one
    assert restored.on_trial_result(None, late, {"epoch": 1.0, "best_test_acc": 0.2}) == "STOP"


# --- MLflow: outages are buffered, state prevents duplicate runs -------------------------------
def _trial(trial_id: str, **last: float) -> SimpleNamespace:
    config = {"run.epochs": 2, "loss.beta": 0.25}
    return SimpleNamespace(trial_id=trial_id, config=config, last_result=dict(last), status="RUNNING")


def test_mlflow_outage_is_buffered_then_flushed(tmp_path: Path, monkeypatch, caplog, tracking_callback):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cb = tracking_callback("http://127.0.0.1:9", tmp_path, retry_s=0.0)  # nothing listens there
    cb.setup(total_num_samples=1)
    trial = _trial("a1")
    cb.on_trial_start(0, [trial], trial)
    for epoch in (1, 2):
        result = {
            "epoch": float(epoch),
            "best_test_acc": 0.1 * epoch,
            "budget_epochs": 2.0,
            "time_total_s": 1.0,
        }
        trial.last_result = result
        cb.on_trial_result(0, [trial], trial, result)
    assert cb.pending >= 4 and "unreachable" in caplog.text
    state = cb.get_state()
    assert len(state["pending"]) == cb.pending

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cb.tracking_uri, cb._client = uri, None  # the server is back
    cb.on_trial_complete(0, [trial], trial)
    cb.on_experiment_end([trial])
    assert cb.pending == 0 and "reachable again" in caplog.text
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    child = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(child) == 1 and child[0].info.status == "FINISHED"
    assert child[0].data.tags["ckd.status"] == "completed" and child[0].data.params["loss.beta"] == "0.25"
    history = client.get_metric_history(child[0].info.run_id, "best_test_acc")
    assert [(m.step, m.value) for m in history] == [(1, 0.1), (2, 0.2)]


def test_mlflow_state_restore_reuses_runs(tmp_path: Path, tracking_callback):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = tracking_callback(uri, tmp_path, retry_s=0.0)
    first.setup(total_num_samples=2)
    a, b = _trial("a1"), _trial("b2")
    first.on_trial_start(0, [a], a)
    first.on_trial_result(0, [a], a, {"epoch": 1.0, "best_test_acc": 0.3})
    snapshot = first.get_state()  # Tune's last snapshot
    first.on_trial_result(0, [a], a, {"epoch": 2.0, "best_test_acc": 0.4})  # after the snapshot
    first.on_trial_start(0, [a, b], b)  # a trial the snapshot never sees
    # the driver dies here; a new driver restores the snapshot
    second = tracking_callback(uri, tmp_path, retry_s=0.0)
    second.set_state(snapshot)
    second.setup(total_num_samples=1)  # b2's slot goes to a new trial, not here
    second.on_step_begin(0, [a])
    second.on_trial_start(0, [a], a)
    for epoch in (1.0, 2.0):  # replayed from the checkpoint: not logged twice
        second.on_trial_result(0, [a], a, {"epoch": epoch, "best_test_acc": 0.2 + epoch / 10})
    a.last_result = {"epoch": 2.0, "budget_epochs": 2.0, "best_test_acc": 0.4}
    second.on_trial_complete(0, [a], a)
    second.on_experiment_end([a])
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    children = {r.data.tags["ckd.trial_id"]: r for r in runs if r.data.tags.get("mlflow.parentRunId")}
    assert sorted(children) == ["a1", "b2"]
    assert children["a1"].info.status == "FINISHED"
    assert children["b2"].info.status == "KILLED" and children["b2"].data.tags["ckd.status"] == "orphaned"
    steps = [m.step for m in client.get_metric_history(children["a1"].info.run_id, "best_test_acc")]
    assert steps == [1, 2]
    parents = [r for r in runs if r.data.tags.get("ckd.role") == "search"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
