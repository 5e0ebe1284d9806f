"""Export a search: the best K configs as ``train --config`` YAML files, all trials as Parquet.

``OUT/best_<rank>.yaml`` holds ``Config.to_yaml()`` of the trial's full resolved config (what
``ckd-search train --config`` reads); ``OUT/trials.parquet`` has one row per trial: ``trial_id``,
``status`` (completed / pruned / failed / incomplete), ``tune_status``, ``epochs_run``,
``ledger_only_epochs`` (epochs known only from the epoch ledger), the trial's config as
``config/<key>`` columns, the last epoch's metrics as ``final/<metric>`` and the best epoch of each
study metric as ``best/<metric>``. A trial that the Optuna journal records as ended but Tune's
restored snapshot lacks (it ran after the snapshot a resume went back to, or before Tune restarted
its experiment) still gets a row, with ``tune_status`` ``NOT_IN_SNAPSHOT``, its status from the
journal, its config from its ``params.json`` (else built from the space as Tune built it: fixed
values, resources and the drawn params) and its history from its ``result.json`` and the ledger.
Ranking uses the study metric of the last epoch (what Optuna was told); completed trials rank before
pruned ones, failed and unfinished never rank. A ranked config that does not validate is skipped
(listed under ``skipped`` in ``export.json``) and the next one takes its number: ``best_1`` ..
``best_K`` have no gaps; they replace an earlier export's files one by one, and stale ones are
removed only after the new ones are written.

A multi-objective study ranks its Pareto-optimal trials first, marks them in a ``pareto`` column and
writes ``OUT/pareto.json``: the completed trials no other completed trial dominates (as Optuna's
``study.best_trials``), with their objective values and configs.

``OUT/space.yaml`` is the search's space (its ``--set`` overrides folded into ``fixed``), so the
export folder describes itself: ``ckd-search analyze OUT`` reads the study's objectives, log scales,
conditions and ASHA's ``max_t`` from it as ``analyze RUN_DIR`` does from the run's own space. An
``OUT`` that is a run folder itself (it holds a ``search.yaml``) keeps its own space, and one that
holds the search's Tune trials gets none (it would pass for a search of its own).

The Optuna journal gives the status of ended trials; one that cannot be read (empty, another
study's, not a journal) is a warning, and the export goes on without it, as without a journal.

Per-epoch history comes from Ray's ``result.json`` merged with the epoch ledger
(``RUN_DIR/epochs.jsonl``, :mod:`.ledger`): Ray can lose rows of ``result.json`` when a trial is
retried, the ledger (appended by the driver, across restarts) cannot. Ledger rows are de-duplicated
by (trial, epoch), the last one winning; a ``result.json`` row wins over a ledger row of the same
epoch (it has every metric). Without a ledger, ``result.json`` alone is used. The ledger's
``result`` rows hold ``epoch`` and ``budget`` (epoch counts and status come from them); metric values
come from a row only where it carries a ``metrics`` mapping.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from ckd_search.analysis.pareto import pareto_mask
from ckd_search.config import Config
from ckd_search.config import dotted_items
from ckd_search.config import load_yaml_mapping
from ckd_search.errors import UserError
from ckd_search.search.outcome import BUDGET_KEY
from ckd_search.search.outcome import COMPLETED
from ckd_search.search.outcome import EPOCH_KEY
from ckd_search.search.outcome import FAILED
from ckd_search.search.outcome import PRUNED
from ckd_search.search.outcome import TUNE_RESULT_KEYS
from ckd_search.search.outcome import best_first
from ckd_search.search.outcome import classify
from ckd_search.search.outcome import finite
from ckd_search.search.settings import SETTINGS_FILE
from ckd_search.search.settings import SPACE_FILE
from ckd_search.search.settings import SearchSettings
from ckd_search.search.settings import is_uri
from ckd_search.search.settings import trial_folder
from ckd_search.search.space import SearchSpace
from ckd_search.search.space import load_space
from ckd_search.storage import atomic_copy
from ckd_search.storage import atomic_write
from ckd_search.storage import atomic_write_text
from ckd_search.storage import output_dir
from ckd_search.storage import read_json_lines
from ckd_search.storage import read_json_object

log = logging.getLogger(__name__)
INCOMPLETE = "incomplete"
#: ``tune_status`` of a trial the journal records as ended but Tune's restored snapshot lacks.
NOT_IN_SNAPSHOT = "NOT_IN_SNAPSHOT"
TRIALS_FILE = "trials.parquet"
INDEX_FILE = "export.json"
PARETO_FILE = "pareto.json"
#: Per-trial history: epoch -> metrics of that epoch.
History = dict[int, dict[str, float]]


@dataclass
class Exported:
    out: Path
    trials: int
    best: list[dict[str, Any]] = field(default_factory=list)  # rank, trial_id, file, values
    pareto: list[dict[str, Any]] = field(default_factory=list)  # trial_id, values, config (MO only)


def collect_trials(settings: SearchSettings) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Rows of all trials of a search (see the module docstring); plus metrics and modes."""
    from ray.tune import ExperimentAnalysis

    from ckd_search.search.ledger import LEDGER_FILE

    space = load_space(settings.space_file, settings.overrides)
    max_t = space.scheduler.max_t if space.scheduler else None
    try:
        analysis = ExperimentAnalysis(settings.experiment_path)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise UserError(
            f"{settings.run_dir}: no Ray Tune results at {settings.experiment_path} ({err})"
        ) from None
    ledger = ledger_histories(settings.root / LEDGER_FILE)
    rows = []
    for trial in analysis.trials:
        stored = frame_history(analysis.trial_dataframes.get(trial.trial_id))
        logged = ledger.get(trial.trial_id, {})
        last = trial.last_result
        row, reached = _row(space, trial.trial_id, trial.status, trial.config, stored, logged, last)
        if trial.status == "ERROR":
            row["status"] = FAILED
        elif trial.status == "TERMINATED":
            row["status"] = classify(reached, error=False, max_t=max_t)
        rows.append(row)
    known = {trial.trial_id for trial in analysis.trials}
    for trial_id, (status, params) in _readable_journal_outcomes(settings).items():
        if trial_id in known:
            continue
        stored = {}
        config: dict[str, Any] = {}
        if not is_uri(settings.experiment_path):  # Tune's files for the trial, where they can be read
            folder = Path(settings.experiment_path) / trial_folder(trial_id)
            stored = result_history(folder / "result.json")
            config = read_json_object(folder / "params.json") or {}
        # else the config Tune built from the space: fixed values, resources and what Optuna drew
        config = config or space.trial_config(params)
        row, _ = _row(space, trial_id, NOT_IN_SNAPSHOT, config, stored, ledger.get(trial_id, {}), None)
        rows.append({**row, "status": status})
    return rows, list(space.study.metrics), list(space.study.modes)


def _row(
    space: SearchSpace,
    trial_id: str,
    tune_status: str,
    config: Mapping[str, Any],
    stored: History,
    logged: History,
    last_result: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One trial's row (status ``incomplete`` until the caller knows better) from its config, its
    ``result.json`` history, its ledger rows and Tune's last result; plus the latest epoch reached."""
    history = merge_histories(stored, logged)
    last = dict(last_result or {})
    reached = latest_epoch(last, history)
    if reached is not last and all(m in history[max(history)] for m in space.study.metrics):
        last = reached  # a stale snapshot: later epochs are known, with their metrics
    row: dict[str, Any] = {
        "trial_id": trial_id,
        "status": INCOMPLETE,
        "tune_status": tune_status,
        "epochs_run": int(reached.get(EPOCH_KEY, 0) or 0),
        "ledger_only_epochs": len(set(logged) - set(stored)),
    }
    row.update({f"config/{k}": v for k, v in sorted(config.items())})
    for key, value in sorted(last.items()):
        if key not in TUNE_RESULT_KEYS and finite(value) is not None:
            row[f"final/{key}"] = float(value)
    for metric, mode in zip(space.study.metrics, space.study.modes):
        seen = [v[metric] for v in history.values() if metric in v]
        seen += [row[f"final/{metric}"]] if f"final/{metric}" in row else []
        if seen:
            row[f"best/{metric}"] = max(seen) if mode == "max" else min(seen)
    return row, reached


def merge_histories(stored: History, logged: History) -> History:
    """``result.json`` rows laid over the ledger's, epoch by epoch (``analyze`` merges them alike)."""
    return {e: {**logged.get(e, {}), **stored.get(e, {})} for e in sorted({*stored, *logged})}


def journal_outcomes(journal_path: Path, study_name: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """Tune trial id -> (status, sampled params) of every trial the Optuna journal records as ended.

    The journal is the search's own record: a resume restores Tune's newest whole snapshot, which can
    predate trials that ran (and ended) after it, and a restarted Tune experiment knows none of the
    earlier one's trials. ``analyze`` takes the status of ended trials from here too.
    """
    from ckd_search.search.optuna_search import ended_trials
    from ckd_search.search.optuna_search import trial_status

    return {
        trial_id: (trial_status(trial), dict(trial.params))
        for trial_id, trial in ended_trials(journal_path, study_name).items()
    }


def _readable_journal_outcomes(settings: SearchSettings) -> dict[str, tuple[str, dict[str, Any]]]:
    """:func:`journal_outcomes` of the search, or none (with a warning) when its journal cannot be
    read: empty, another study's or not a journal at all (``analyze`` also goes on without it)."""
    try:
        return journal_outcomes(settings.journal_path, settings.study_name)
    except (KeyError, ValueError, OSError) as err:
        log.warning(
            "%s: Optuna journal not readable for study %s (%s: %s); exporting without its trial statuses",
            settings.journal_path,
            settings.study_name,
            type(err).__name__,
            err,
        )
        return {}


def result_history(path: Path) -> History:
    """Epoch -> finite metrics from a trial's ``result.json`` (lines cut short are skipped)."""
    try:
        return _history(read_json_lines(path)[0])
    except OSError:
        return {}


def frame_history(frame: Any) -> History:
    """Epoch -> finite metrics from a trial's ``result.json`` table (Ray's ``trial_dataframes``)."""
    if frame is None or len(frame) == 0 or EPOCH_KEY not in frame:
        return {}
    return _history(frame.to_dict("records"))


def _history(records: Sequence[Mapping[str, Any]]) -> History:
    history: History = {}
    for record in records:
        epoch = finite(record.get(EPOCH_KEY))
        if epoch is None:
            continue
        history[int(epoch)] = _metrics(record)
    return history


def ledger_histories(path: Path) -> dict[str, History]:
    """Trial -> epoch -> what the ledger knows of that epoch (``epoch``, ``budget_epochs`` and any
    ``metrics`` the row carries); de-duplicated by (trial, epoch), the last row winning. Empty
    when there is no ledger."""
    from ckd_search.search.ledger import read_ledger

    out: dict[str, History] = {}
    for row in read_ledger(path):
        epoch = finite(row.get("epoch"))
        if row.get("event") != "result" or epoch is None:
            continue
        known = _metrics(row["metrics"]) if isinstance(row.get("metrics"), Mapping) else {}
        known[EPOCH_KEY] = epoch
        budget = finite(row.get("budget"))
        if budget is not None:
            known[BUDGET_KEY] = budget
        out.setdefault(str(row["trial"]), {})[int(epoch)] = known
    return out


def latest_epoch(last: dict[str, Any], history: History) -> dict[str, Any]:
    """Tune's last result, or the history's last epoch laid over it where that is later.

    Tune's ``last_result`` comes from its experiment snapshot, which a killed driver can leave
    behind the ledger. The caller takes ``epoch`` and ``budget_epochs`` (the status) from this, and
    the ``final/`` metrics only when that later epoch has every study metric.
    """
    if not history or max(history) <= (finite(last.get(EPOCH_KEY)) or 0):
        return last
    return {**last, **history[max(history)]}


def _metrics(record: Mapping[str, Any]) -> dict[str, float]:
    return {
        str(k): float(v)
        for k, v in record.items()
        if k not in TUNE_RESULT_KEYS and not str(k).startswith("config/") and finite(v) is not None
    }


def rank(
    rows: Sequence[dict[str, Any]], metrics: Sequence[str], modes: Sequence[str]
) -> list[dict[str, Any]]:
    """Completed trials first, then pruned; by the final metric (Pareto front first for several)."""

    def first(row: dict[str, Any]) -> tuple[float, str]:
        return best_first(float(row[f"final/{metrics[0]}"]), row["trial_id"], modes[0])

    ranked: list[dict[str, Any]] = []
    for status in (COMPLETED, PRUNED):
        group = [r for r in rows if r["status"] == status and _values(r, metrics) is not None]
        front = pareto_mask([_values(r, metrics) for r in group], modes)  # type: ignore[misc]
        ranked += sorted((r for r, on in zip(group, front) if on), key=first)
        ranked += sorted((r for r, on in zip(group, front) if not on), key=first)
    return ranked


def pareto_front(
    rows: Sequence[dict[str, Any]], metrics: Sequence[str], modes: Sequence[str]
) -> list[dict[str, Any]]:
    """The completed trials no other completed trial dominates (Optuna's ``best_trials``)."""
    done = [r for r in rows if r["status"] == COMPLETED and _values(r, metrics) is not None]
    mask = pareto_mask([_values(r, metrics) for r in done], modes)  # type: ignore[misc]
    return [r for r, on in zip(done, mask) if on]


def _values(row: Mapping[str, Any], metrics: Sequence[str]) -> list[float] | None:
    found = [finite(row.get(f"final/{m}")) for m in metrics]
    return None if any(v is None for v in found) else [float(v) for v in found if v is not None]


def _config(row: Mapping[str, Any]) -> dict[str, Any]:
    return {key[len("config/") :]: v for key, v in row.items() if key.startswith("config/")}


def export_run(run_dir: str | Path, top: int = 3, out: str | Path | None = None) -> Exported:
    """Write ``best_<k>.yaml`` for the best ``top`` trials, ``trials.parquet`` for all, and
    ``pareto.json`` for a multi-objective search."""
    if top < 0:
        raise UserError(f"--top {top} must be >= 0")
    settings = SearchSettings.load(run_dir)
    target = Path(out).expanduser() if out else settings.root / "export"
    rows, metrics, modes = collect_trials(settings)
    multi = len(metrics) > 1
    on_front = {id(r) for r in pareto_front(rows, metrics, modes)} if multi else set()
    if multi:
        for row in rows:
            row["pareto"] = id(row) in on_front
    ranked = rank(rows, metrics, modes)
    output_dir(target)
    write_parquet(rows, target / TRIALS_FILE)
    write_space(settings, target)
    result = Exported(target, len(rows))
    files: dict[str, str] = {}
    skipped: list[dict[str, Any]] = []
    for row in ranked:  # the best ``top`` exportable configs, numbered without gaps
        if len(result.best) == top:
            break
        try:
            cfg = Config.from_dict(_config(row))
        except UserError as err:
            log.warning("trial %s: config not exportable, next one taken (%s)", row["trial_id"], err)
            skipped.append({"trial_id": row["trial_id"], "error": str(err)})
            continue
        k = len(result.best) + 1
        values = {m: row.get(f"final/{m}") for m in metrics}
        header = (
            f"# ckd-search export: rank {k} of study {settings.study_name}, trial {row['trial_id']} "
            f"({row['status']}, {row['epochs_run']} epochs): "
            + ", ".join(f"{m}={v}" for m, v in values.items())
            + "\n"
            f"# retrain: ckd-search train --config {target / f'best_{k}.yaml'}\n"
        )
        path = atomic_write_text(target / f"best_{k}.yaml", header + cfg.to_yaml())  # replaces the old one
        files[row["trial_id"]] = path.name
        result.best.append(
            {"rank": k, "trial_id": row["trial_id"], "file": path.name, "status": row["status"], **values}
        )
    for old in set(target.glob("best_*.yaml")) - {target / name for name in files.values()}:
        old.unlink()  # stale ranks of an earlier export, removed only once the new ones are written
    (target / PARETO_FILE).unlink(missing_ok=True)  # a stale front from an earlier export
    if multi:
        result.pareto = [
            {
                "trial_id": r["trial_id"],
                "values": {m: r[f"final/{m}"] for m in metrics},
                "epochs_run": r["epochs_run"],
                "file": files.get(r["trial_id"]),
                "config": _config(r),
            }
            for r in ranked  # the front comes first in rank order (completed trials lead)
            if id(r) in on_front
        ]
        doc: dict[str, Any] = {"study": settings.study_name, "metrics": metrics, "modes": modes}
        doc.update(completed=sum(r["status"] == COMPLETED for r in rows), front=result.pareto)
        atomic_write_text(target / PARETO_FILE, json.dumps(doc, indent=1, default=str))
    atomic_write_text(
        target / INDEX_FILE,
        json.dumps(
            {"study": settings.study_name, "trials": len(rows), "best": result.best, "skipped": skipped},
            indent=1,
        ),
    )
    return result


def write_space(settings: SearchSettings, target: Path) -> None:
    """``OUT/space.yaml``: the search's space, written atomically; its ``--set`` overrides (which a
    space may need to validate) folded into ``fixed``, since ``OUT`` has no ``search.yaml`` to hold
    them. Nothing is written into a run folder (``--out`` naming one: its own space stands), nor into
    a folder holding the search's Tune trials: ``analyze`` would take it for a search of its own."""
    experiment = settings.experiment_path
    holds_trials = not is_uri(experiment) and Path(experiment).expanduser().resolve().is_relative_to(
        target.expanduser().resolve()
    )
    if (target / SETTINGS_FILE).is_file() or holds_trials:
        log.info("%s: %s not written (a run folder, or one holding the search's trials)", target, SPACE_FILE)
        return
    if not settings.overrides:
        atomic_copy(settings.space_file, target / SPACE_FILE)  # as given, comments and all
        return
    raw = load_yaml_mapping(settings.space_file)
    fixed = raw.get("fixed")
    raw["fixed"] = {**dict(dotted_items(fixed if isinstance(fixed, Mapping) else {})), **settings.overrides}
    header = (
        f"# ckd-search export: the space of study {settings.study_name} ({settings.space_file}), "
        "its --set overrides folded into fixed\n"
    )
    atomic_write_text(target / SPACE_FILE, header + yaml.safe_dump(raw, sort_keys=False))


def write_parquet(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Rows -> Parquet, one column type per column (mixed numbers become float, other mixes str)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    data = {c: _column([row.get(c) for row in rows]) for c in columns}
    table = pa.table(data) if columns else pa.table({"trial_id": pa.array([], pa.string())})
    atomic_write(path, lambda handle: pq.write_table(table, handle))


def _column(values: list[Any]) -> Any:
    import pyarrow as pa

    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, pa.bool_())
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        if all(isinstance(v, int) for v in present):
            return pa.array(values, pa.int64())
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if present and all(isinstance(v, str) for v in present):
        return pa.array(values, pa.string())
    return pa.array([None if v is None else _text(v) for v in values], pa.string())


def _text(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return str(value)
