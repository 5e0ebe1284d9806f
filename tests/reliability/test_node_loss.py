"""A worker node dies mid-search: its trials resume elsewhere from their latest checkpoint.

Ray Tune's release test kills nodes at random and asserts that every trial still reaches its last
iteration. Here a three-node cluster (head without CPUs: trials run on two workers) runs a search
with ``max_failures: -1``; when a trial on worker A has reported epoch 2 or later (and is not done),
worker A is SIGKILLed (every process of its session: ``ray start``, raylet, trial workers) and a
replacement node joins. Checked from Tune's per-trial results, the Optuna journal and MLflow:

- every trial reaches its planned last epoch and is COMPLETE in Optuna and FINISHED in MLflow;
- the killed trial restarted on another node (a pid not of node A) at its last checkpoint + 1,
  and every trial's epochs are exactly 1..E after de-duplication (nothing lost, per-epoch metrics
  in MLflow are 1..E once each).
"""

from __future__ import annotations

import time

import pytest

from ckd_search.search.chaos import LocalCluster
from ckd_search.search.chaos import audit_run
from ckd_search.search.chaos import session_pids
from ckd_search.search.settings import SearchSettings

EPOCHS = 6


@pytest.mark.slow
def test_worker_node_killed_mid_search(tmp_path, tiny_fixed, helpers, drivers):
    space = helpers.write_space(
        tmp_path,
        {**tiny_fixed, "run.epochs": EPOCHS},
        study={
            "name": "nodeloss",
            "metric": "train_loss",
            "mode": "min",
            "num_trials": 3,
            "seed": 0,
            "max_failures": -1,
        },
        searcher="random",
    )
    run = tmp_path / "run"
    with LocalCluster(tmp_path / "nodes", head_cpus=0, worker_cpus=1) as cluster:
        node_a = cluster.add_worker()
        cluster.add_worker()
        env = {
            **cluster.env,
            "CKD_SEARCH_FAULT_INJECT": "delay:*:*:0.8",  # ~1 s epochs: a kill lands mid-trial
            "CKD_SEARCH_FAULT_DIR": str(tmp_path / "faults"),
        }
        args = [
            "search",
            "--space",
            str(space),
            "--address",
            cluster.address,
            "--out",
            str(run),
            "--gpus",
            "0",
        ]
        driver = helpers.start_driver(drivers, args, env, tmp_path / "driver.log")

        victim, killed_pids, deadline = None, set(), time.monotonic() + 240
        while victim is None and time.monotonic() < deadline:
            assert driver.alive(), driver.tail()
            time.sleep(0.2)
            on_a = set(session_pids(node_a.sid))
            for audit in audit_run(run).values():
                last = audit.rows[-1] if audit.rows else {}
                if int(last.get("pid", -1)) in on_a and 2 <= int(last.get("epoch", 0)) < EPOCHS:
                    victim = audit.trial_id
                    killed_pids = set(cluster.kill(node_a))
                    break
        assert victim is not None, "no trial ran on worker A mid-way:\n" + driver.tail()
        cluster.add_worker()  # a replacement joins, as an autoscaler would
        assert driver.wait(timeout=300) == 0, driver.tail()

    settings = SearchSettings.load(run)
    audits = audit_run(run)
    assert len(audits) == 3
    for audit in audits.values():
        assert audit.reached_end and audit.last_epoch == EPOCHS, (audit.trial_id, audit.epochs)
        assert sorted(set(audit.epochs)) == list(range(1, EPOCHS + 1)), (audit.trial_id, audit.epochs)
        assert audit.lost == [] and audit.bad_resumes() == [], (audit.trial_id, audit.resume_points())
    killed = audits[victim]
    assert killed.restarts >= 1, killed.epochs
    (checkpointed, first), *_ = killed.resume_points()
    assert checkpointed >= 1 and first == checkpointed + 1  # no epoch lost beyond the last checkpoint
    after = killed.segments[1]
    assert {int(r["pid"]) for r in after}.isdisjoint(killed_pids)  # resumed on another node

    trials = helpers.journal_trials(settings)
    assert len(trials) == 3 and {t.state.name for t in trials} == {"COMPLETE"}
    assert sorted(t.user_attrs["ray_trial_id"] for t in trials) == sorted(audits)
    for t in trials:
        assert sorted(t.intermediate_values) == list(range(1, EPOCHS + 1))
    client, parents, children = helpers.mlflow_runs(settings)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["ckd.trial_id"] for r in children) == sorted(audits)
    for r in children:
        assert r.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
        assert steps == list(range(1, EPOCHS + 1))
    log = (tmp_path / "driver.log").read_text()
    assert f"trial {victim} failed" in log and "retry 1 from its latest checkpoint" in log
