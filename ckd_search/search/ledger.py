"""The epoch ledger: every result and trial event as Tune's driver saw it, in ``RUN_DIR/epochs.jsonl``.

Tune's own per-trial ``result.json`` is written to a driver staging folder and copied to storage
now and then; when a trial is retried, Tune copies the stored (older) file back over the staging
one, so rows reported since the last copy are lost from it (seen on Ray 2.60 with a trial that
failed three times within seconds: an empty ``result.json``). The ledger is ours: one JSON line per
event, appended (and flushed) by a driver-side callback, never rewritten, kept across ``--resume``.
:func:`ckd_search.search.chaos.audit_run` reads it to prove that no epoch was lost.

Events: ``start`` (a trial (re)starts), ``result`` (``epoch``, ``since_restore`` = Tune's
``iterations_since_restore``, ``checkpoint`` = whether the result carried one, worker ``pid`` and
``node``, ``metrics`` = the engine metrics a study may name, so export can restore a result lost
from ``result.json``), ``checkpoint`` (Tune registered the checkpoint of the result before it, at
``epoch``: what a restart resumes from), ``recover`` (an error Tune retries; ``error`` is one line),
``error`` (the trial ended failed), ``complete``. Every line has ``trial``, ``event``, ``t`` (Unix
time) and ``driver`` (pid).

A result's checkpoint is registered one round trip after the result: Tune processes the result
(callbacks included), then asks the trial's actor for it (``save``). A node lost in between leaves
the previous checkpoint as the latest, though the new one was already stored; the trial then replays
an epoch. The ``checkpoint`` event tells the two apart.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ckd_search.search.outcome import BUDGET_KEY
from ckd_search.search.outcome import EPOCH_KEY
from ckd_search.search.outcome import finite

LEDGER_FILE = "epochs.jsonl"


def engine_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The finite engine metrics of a Tune result (those a study may optimise)."""
    from ckd_search.search.space import ENGINE_METRICS

    return {key: value for key in ENGINE_METRICS if (value := finite(result.get(key))) is not None}


class EpochLedger(Callback):
    """Append one JSON line per trial event to ``path`` (driver side)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    def _write(self, trial: Any, event: str, **fields: Any) -> None:
        row = {"trial": trial.trial_id, "event": event, "t": round(time.time(), 3), "driver": os.getpid()}
        row.update(fields)
        try:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(row) + "\n")
        except OSError:
            pass  # the ledger is an audit trail; a full disk must not stop the search

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trial, "start")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if EPOCH_KEY not in result:
            return
        self._write(
            trial,
            "result",
            epoch=int(result[EPOCH_KEY]),
            since_restore=int(result.get("iterations_since_restore", 0)),
            iteration=int(result.get("training_iteration", 0)),
            checkpoint=bool(result.get("checkpoint_dir_name")),
            budget=result.get(BUDGET_KEY),
            pid=result.get("pid"),
            node=result.get("node_ip"),
            metrics=engine_metrics(result),
        )

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        self._write(trial, "checkpoint", epoch=int((trial.last_result or {}).get(EPOCH_KEY, 0)))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from ckd_search.search.faults import last_error

        self._write(trial, "recover", error=last_error(trial.trial_id), failures=trial.num_failures)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from ckd_search.search.faults import last_error

        self._write(trial, "error", error=last_error(trial.trial_id), failures=trial.num_failures)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        self._write(trial, "complete", epoch=int(last.get(EPOCH_KEY, 0)))


def read_ledger(path: str | Path) -> list[dict[str, Any]]:
    """The ledger's rows (a line cut off by a killed driver is skipped)."""
    rows = []
    p = Path(path)
    if p.is_file():
        for line in p.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "trial" in row:
                rows.append(row)
    return rows
