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
