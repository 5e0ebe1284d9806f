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


def test_rank_puts_completed_trials_first_then_by_the_metric_and_its_mode():
    from ckd_search.search.export import COMPLETED
    from ckd_search.search.export import PRUNED
    from ckd_search.search.export import rank

    rows = [
        {"trial_id": "pruned-best", "status": PRUNED, "final/acc": 0.99, "final/sops": 1.0},
        {"trial_id": "done-low", "status": COMPLETED, "final/acc": 0.50, "final/sops": 9.0},
        {"trial_id": "done-high", "status": COMPLETED, "final/acc": 0.80, "final/sops": 9.0},
        {"trial_id": "no-metric", "status": COMPLETED, "final/acc": float("nan"), "final/sops": 1.0},
        {"trial_id": "done-cheap", "status": COMPLETED, "final/acc": 0.40, "final/sops": 2.0},
    ]
    ids = [r["trial_id"] for r in rank(rows, ["acc"], ["max"])]
    assert ids == ["done-high", "done-low", "done-cheap", "pruned-best"]  # a NaN metric is left out
    assert [r["trial_id"] for r in rank(rows, ["acc"], ["min"])][:3] == [
        "done-cheap",
        "done-low",
        "done-high",
    ]
    # two objectives: the Pareto front (done-high, done-cheap) before the dominated done-low
    two = [r["trial_id"] for r in rank(rows, ["acc", "sops"], ["max", "min"])]
    assert two == ["done-high", "done-cheap", "done-low", "pruned-best"]


def test_rank_breaks_ties_by_the_lower_trial_id_whatever_the_input_order():
    from ckd_search.search.export import COMPLETED
    from ckd_search.search.export import rank

    rows = [{"trial_id": t, "status": COMPLETED, "final/acc": 0.8} for t in ("b_00002", "b_00000", "b_00001")]
    for mode in ("max", "min"):
        assert [r["trial_id"] for r in rank(rows, ["acc"], [mode])] == ["b_00000", "b_00001", "b_00002"]
        assert [r["trial_id"] for r in rank(rows[::-1], ["acc"], [mode])] == ["b_00000", "b_00001", "b_00002"]
