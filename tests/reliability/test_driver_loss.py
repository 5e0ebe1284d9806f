"""The driver dies (SIGKILL, with everything it started) at random points, several times; each time
``ckd-search search --resume RUN_DIR`` continues, and the last resume completes the same search.

Kill 1 lands at a random moment in the first seconds (Ray start, data preparation, the first trial
or before Tune's first experiment snapshot); kills 2 and 3 land a random time after a random number
of new epoch results. Afterwards:

- Optuna (the journal opened directly): one trial per Tune trial, none duplicated, none RUNNING or
  WAITING, states COMPLETE/PRUNED/FAIL only, intermediate values 1..E once each; no
  ``UpdateFinishedTrialError`` anywhere;
- ASHA: ``asha_state.json`` only grows across the kills (rungs survive), and every recorded rung
  entry is of a trial that really reached that milestone;
- MLflow: one parent (FINISHED) and exactly one child run per Tune trial, none RUNNING; runs of
  trials started after a snapshot and never resumed are KILLED with ``ckd.status=orphaned``;
  per-epoch metrics logged once per epoch;
- the epoch ledger: every trial's epochs are 1..E after de-duplication (nothing lost).
"""

from __future__ import annotations

import json
import os
import random
import time

import pytest

from ckd_search.search.chaos import audit_run
from ckd_search.search.ledger import LEDGER_FILE
from ckd_search.search.ledger import read_ledger
from ckd_search.search.settings import SearchSettings

TRIALS = 5
MAX_T = 4


def rung_entries(path) -> set[tuple[float, str]]:
    if not path.is_file():
        return set()
    state = json.loads(path.read_text())
    return {(float(m), t) for bracket in state["brackets"] for m, rec in bracket for t in rec}


def results_by(run, pid: int) -> int:
    return sum(1 for r in read_ledger(run / LEDGER_FILE) if r["event"] == "result" and r["driver"] == pid)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="flaky under heavy load (failed 1 of 3 runs in the full suite on 2 cores); the kill points are "
    "random, the failing invariant is not yet identified - see the note on issue #7",
)
def test_driver_killed_three_times_then_resumed(tmp_path, tiny_fixed, helpers, drivers):
    rng = random.Random(20261126)
    space = helpers.write_space(
        tmp_path,
        {**tiny_fixed, "run.epochs": MAX_T},
        study={"name": "driverloss", "metric": "train_loss", "mode": "min", "num_trials": TRIALS, "seed": 2},
        scheduler={"asha": {"max_t": MAX_T, "grace_period": 1, "reduction_factor": 2}},
    )
    run = tmp_path / "run"
    env = {
        **os.environ,
        "TUNE_GLOBAL_CHECKPOINT_S": "0",
        "CKD_SEARCH_FAULT_INJECT": "delay:*:*:0.4",
        "CKD_SEARCH_FAULT_DIR": str(tmp_path / "faults"),
    }
    log_path = tmp_path / "driver.log"
    args = ["search", "--space", str(space), "--out", str(run), "--gpus", "0", "--cpus", "2"]
    driver = helpers.start_driver(drivers, args, env, log_path)
    rungs: list[set] = []
    kills = []
    for number in range(3):
        deadline = time.monotonic() + 240
        if number == 0:
            while not (run / "search.yaml").is_file() and time.monotonic() < deadline:
                assert driver.alive(), driver.tail()
                time.sleep(0.1)
            delay = rng.uniform(0.0, 6.0)
            time.sleep(delay)
            kills.append(f"{delay:.1f} s after search.yaml")
        else:
            wanted = rng.randint(1, 4)
            while results_by(run, driver.proc.pid) < wanted and time.monotonic() < deadline:
                assert driver.alive(), driver.tail()
                time.sleep(0.1)
            delay = rng.uniform(0.0, 1.0)
            time.sleep(delay)
            kills.append(f"{delay:.1f} s after {wanted} new results")
        assert driver.alive(), f"the search ended before kill {number + 1}:\n{driver.tail()}"
        driver.kill()
        rungs.append(rung_entries(run / "asha_state.json"))
        driver = helpers.start_driver(drivers, ["search", "--resume", str(run)], env, log_path)
    assert driver.wait(timeout=420) == 0, driver.tail()
    rungs.append(rung_entries(run / "asha_state.json"))

    log = log_path.read_text()
    assert log.count("=== ckd-search search --resume") == 3, kills
    assert "UpdateFinishedTrialError" not in log
    # Ray may log (and then ignore) a failed delete of an old checkpoint that a killed driver already
    # removed after its last snapshot; any other traceback in the final driver's log is a failure.
    last = log.split("=== ")[-1]
    blocks = last.split("Traceback (most recent call last):")[1:]
    unexpected = [b for b in blocks if not ("_delete_fs_path" in b and "Path not found" in b)]
    assert not unexpected, unexpected[0][:2000]
    settings = SearchSettings.load(run)
    from ray.tune import ExperimentAnalysis

    tune_trials = {t.trial_id: t for t in ExperimentAnalysis(settings.experiment_path).trials}
    assert len(tune_trials) == TRIALS and {t.status for t in tune_trials.values()} == {"TERMINATED"}

    # Optuna: one record per Tune trial, all finished
    trials = helpers.journal_trials(settings)
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED", "FAIL"}, kills
    owners = [t.user_attrs.get("ray_trial_id") for t in trials]
    assert sorted(o for o in owners if o in tune_trials) == sorted(tune_trials), (owners, kills)
    live = [t for t in trials if t.user_attrs.get("ray_trial_id") in tune_trials]
    assert all(not t.system_attrs.get("ckd:orphaned") for t in live)
    assert {t.state.name for t in live} <= {"COMPLETE", "PRUNED"}
    audits = audit_run(run)
    for t in live:
        audit = audits[t.user_attrs["ray_trial_id"]]
        epochs = sorted(set(audit.epochs))
        assert epochs == list(range(1, audit.last_epoch + 1)), (audit.trial_id, audit.epochs, kills)
        assert sorted(t.intermediate_values) == epochs
        assert (t.state.name == "COMPLETE") == (audit.last_epoch == MAX_T)

    # ASHA: rungs only grow across kills; entries are real
    for before, after in zip(rungs, rungs[1:]):
        assert before <= after, kills
    reached = {a.trial_id: a.last_epoch for a in audits.values()}
    for milestone, trial_id in rungs[-1]:
        assert reached.get(trial_id, 0) >= milestone

    # MLflow: exactly one child run per Tune trial, nothing left RUNNING
    client, parents, children = helpers.mlflow_runs(settings)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    by_trial: dict[str, list] = {}
    for r in children:
        by_trial.setdefault(r.data.tags["ckd.trial_id"], []).append(r)
    for trial_id in tune_trials:
        (child,) = by_trial.pop(trial_id)
        assert child.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "train_loss")]
        assert steps == list(range(1, audits[trial_id].last_epoch + 1))
    for orphans in by_trial.values():  # trials started after the last snapshot, never resumed
        for r in orphans:
            assert r.info.status == "KILLED" and r.data.tags["ckd.status"] == "orphaned"
