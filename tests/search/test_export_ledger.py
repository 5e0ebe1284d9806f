"""How ``ckd-search export`` reads the epoch ledger (``RUN_DIR/epochs.jsonl``).

The end-to-end checks (ledger filling epochs a damaged ``result.json`` lost, ``result.json`` alone
without a ledger) run on copies of the real search in ``test_multiobjective.py``, which already
pays for one search."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ckd_search.search.export import ledger_histories
from ckd_search.search.ledger import LEDGER_FILE


def write_ledger(path: Path, rows: list[dict[str, Any]], tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def test_ledger_rows_are_deduplicated_by_trial_and_epoch(tmp_path):
    """Across driver restarts an epoch is logged again; the last row of each (trial, epoch) wins."""
    rows = [
        {"trial": "a", "event": "start"},
        {"trial": "a", "event": "result", "epoch": 1, "budget": 3.0},
        {"trial": "a", "event": "result", "epoch": 2, "budget": 3.0, "metrics": {"test_acc": 0.2}},
        {"trial": "a", "event": "recover", "error": "node lost"},
        {"trial": "a", "event": "result", "epoch": 2, "budget": 3.0, "metrics": {"test_acc": 0.3}},
        {"trial": "b", "event": "result", "epoch": 1, "metrics": {"test_acc": float("nan")}},
        {"trial": "a", "event": "complete", "epoch": 2},
    ]
    write_ledger(tmp_path / LEDGER_FILE, rows, tail='{"trial": "a", "event": "result", "epo')
    got = ledger_histories(tmp_path / LEDGER_FILE)
    assert sorted(got) == ["a", "b"]
    assert sorted(got["a"]) == [1, 2]
    assert got["a"][2] == {"test_acc": 0.3, "epoch": 2.0, "budget_epochs": 3.0}
    assert got["a"][1] == {"epoch": 1.0, "budget_epochs": 3.0}
    assert got["b"][1] == {"epoch": 1.0}  # a non-finite metric is no value
    assert ledger_histories(tmp_path / "missing.jsonl") == {}
