"""The epoch ledger: one appended JSON line per event; result rows carry the study-relevant metrics."""

from __future__ import annotations

import math
from types import SimpleNamespace

from ckd_search.search.ledger import EpochLedger
from ckd_search.search.ledger import engine_metrics
from ckd_search.search.ledger import read_ledger
from ckd_search.search.outcome import EPOCH_KEY


def test_engine_metrics_keeps_finite_engine_numbers_only():
    result = {
        "best_test_acc": 0.5,
        "sops_per_sample": 12,
        "train_loss": math.nan,
        "timesteps": 4.0,
        "config": {"kd.k": 1.0},
        "done": False,
        "node_ip": "127.0.0.1",
    }
    assert engine_metrics(result) == {"best_test_acc": 0.5, "sops_per_sample": 12.0, "timesteps": 4.0}


def test_result_rows_are_appended_with_metrics(tmp_path):
    ledger = EpochLedger(tmp_path / "epochs.jsonl")
    trial = SimpleNamespace(trial_id="t1")
    ledger.on_trial_start(0, [], trial)
    for epoch in (1, 2):
        ledger.on_trial_result(0, [], trial, {EPOCH_KEY: epoch, "test_acc": 0.1 * epoch, "pid": 7})
    ledger.on_trial_result(0, [], trial, {"test_acc": 0.9})  # no epoch: not an engine result
    rows = list(read_ledger(tmp_path / "epochs.jsonl"))
    assert [r["event"] for r in rows] == ["start", "result", "result"]
    assert [r["metrics"] for r in rows[1:]] == [
        {"epoch": 1.0, "test_acc": 0.1},
        {"epoch": 2.0, "test_acc": 0.2},
    ]
    assert [r["epoch"] for r in rows[1:]] == [1, 2]


def _replay(tmp_path, events, with_checkpoint_events=True):
    """Write a trial's events through the ledger callbacks; return its audit."""
    from ckd_search.search.chaos import audit_run

    ledger = EpochLedger(tmp_path / "epochs.jsonl")
    trial = SimpleNamespace(trial_id="t1", last_result={})
    for kind, epoch, since_restore in events:
        if kind == "start":
            ledger.on_trial_start(0, [], trial)
        elif kind == "result":
            trial.last_result = {EPOCH_KEY: epoch, "iterations_since_restore": since_restore}
            ledger.on_trial_result(0, [], trial, {**trial.last_result, "checkpoint_dir_name": f"c{epoch}"})
        elif with_checkpoint_events:  # "checkpoint": Tune registered the last result's checkpoint
            ledger.on_checkpoint(0, [], trial, checkpoint=object())
    return audit_run(tmp_path)["t1"]


# A node dies after epoch 2's result reached the driver but before Tune registered its checkpoint:
# the trial rightly resumes from epoch 1's checkpoint and replays epoch 2.
NODE_LOST_BEFORE_SAVE = [
    ("start", 0, 0),
    ("result", 1, 1),
    ("checkpoint", 1, 0),
    ("result", 2, 2),
    ("start", 0, 0),
    ("result", 2, 1),
    ("checkpoint", 2, 0),
    ("result", 3, 2),
    ("checkpoint", 3, 0),
]


def test_checkpoint_events_carry_the_epoch_of_the_result_before(tmp_path):
    _replay(tmp_path, NODE_LOST_BEFORE_SAVE)
    rows = read_ledger(tmp_path / "epochs.jsonl")
    assert [r["epoch"] for r in rows if r["event"] == "checkpoint"] == [1, 2, 3]


def test_a_resume_counts_from_the_last_registered_checkpoint(tmp_path):
    audit = _replay(tmp_path, NODE_LOST_BEFORE_SAVE)
    assert audit.resume_points() == [(1, 2)] and audit.bad_resumes() == []
    assert audit.epochs == [1, 2, 2, 3] and audit.lost == []


def test_a_ledger_without_checkpoint_events_falls_back_to_the_results(tmp_path):
    audit = _replay(tmp_path, NODE_LOST_BEFORE_SAVE, with_checkpoint_events=False)
    assert audit.resume_points() == [(2, 2)]  # the result carried epoch 2's checkpoint
    assert audit.bad_resumes() == [(2, 2)]
