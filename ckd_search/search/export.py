"""Export a search: the best K configs as ``train --config`` YAML files, all trials as Parquet.

``OUT/best_<rank>.yaml`` holds ``Config.to_yaml()`` of the trial's full resolved config (what
``ckd-search train --config`` reads); ``OUT/trials.parquet`` has one row per trial: ``trial_id``,
``status`` (completed / pruned / failed / incomplete), ``tune_status``, ``epochs_run``, the trial's
config as ``config/<key>`` columns, the last epoch's metrics as ``final/<metric>`` and the best epoch
of each study metric as ``best/<metric>``. Ranking uses the study metric of the last epoch (what
Optuna was told); completed trials rank before pruned ones, failed and unfinished never rank.
A multi-objective study ranks its Pareto-optimal trials first.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from ckd_search.config import Config
from ckd_search.errors import UserError
from ckd_search.search.outcome import COMPLETED
from ckd_search.search.outcome import EPOCH_KEY
from ckd_search.search.outcome import FAILED
from ckd_search.search.outcome import PRUNED
from ckd_search.search.outcome import TUNE_RESULT_KEYS
from ckd_search.search.outcome import classify
from ckd_search.search.outcome import finite
from ckd_search.search.settings import SearchSettings
from ckd_search.search.space import load_space
from ckd_search.storage import atomic_write_text

log = logging.getLogger(__name__)
INCOMPLETE = "incomplete"
TRIALS_FILE = "trials.parquet"
INDEX_FILE = "export.json"


@dataclass
class Exported:
    out: Path
    trials: int
    best: list[dict[str, Any]] = field(default_factory=list)  # rank, trial_id, file, values


def collect_trials(settings: SearchSettings) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Rows of all trials of a search (see the module docstring); plus metrics and modes."""
    from ray.tune import ExperimentAnalysis

    space = load_space(settings.space_file, settings.overrides)
    max_t = space.scheduler.max_t if space.scheduler else None
    try:
        analysis = ExperimentAnalysis(settings.experiment_path)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise UserError(
            f"{settings.run_dir}: no Ray Tune results at {settings.experiment_path} ({err})"
        ) from None
    rows = []
    for trial in analysis.trials:
        last = dict(trial.last_result or {})
        frame = analysis.trial_dataframes.get(trial.trial_id)
        if trial.status == "ERROR":
            status = FAILED
        elif trial.status == "TERMINATED":
            status = classify(last, error=False, max_t=max_t)
        else:
            status = INCOMPLETE
        row: dict[str, Any] = {
            "trial_id": trial.trial_id,
            "status": status,
            "tune_status": trial.status,
            "epochs_run": int(last.get(EPOCH_KEY, 0) or 0),
        }
        row.update({f"config/{k}": v for k, v in sorted(trial.config.items())})
        for key, value in sorted(last.items()):
            if key not in TUNE_RESULT_KEYS and finite(value) is not None:
                row[f"final/{key}"] = float(value)
        for metric, mode in zip(space.study.metrics, space.study.modes):
            series = frame[metric].dropna() if frame is not None and metric in frame else None
            if series is not None and len(series):
                row[f"best/{metric}"] = float(series.max() if mode == "max" else series.min())
        rows.append(row)
    return rows, list(space.study.metrics), list(space.study.modes)


def rank(
    rows: Sequence[dict[str, Any]], metrics: Sequence[str], modes: Sequence[str]
) -> list[dict[str, Any]]:
    """Completed trials first, then pruned; by the final metric (Pareto front first for several)."""
    signs = [1.0 if m == "max" else -1.0 for m in modes]

    def values(row: dict[str, Any]) -> list[float] | None:
        found = [finite(row.get(f"final/{m}")) for m in metrics]
        return None if any(v is None for v in found) else [s * float(v) for s, v in zip(signs, found)]  # type: ignore[arg-type]

    ranked: list[dict[str, Any]] = []
    for status in (COMPLETED, PRUNED):
        group = [(r, values(r)) for r in rows if r["status"] == status and values(r) is not None]
        if len(metrics) > 1:
            front = [r for r, v in group if not any(_dominates(w, v) for _, w in group)]  # type: ignore[arg-type]
            rest = [r for r, _ in group if r not in front]
            ranked += sorted(front, key=lambda r: -values(r)[0]) + sorted(rest, key=lambda r: -values(r)[0])  # type: ignore[index]
        else:
            ranked += [r for r, _ in sorted(group, key=lambda rv: -rv[1][0])]  # type: ignore[index]
    return ranked


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def export_run(run_dir: str | Path, top: int = 3, out: str | Path | None = None) -> Exported:
    """Write ``best_<k>.yaml`` for the best ``top`` trials and ``trials.parquet`` for all."""
    if top < 0:
        raise UserError(f"--top {top} must be >= 0")
    settings = SearchSettings.load(run_dir)
    target = Path(out).expanduser() if out else settings.root / "export"
    rows, metrics, modes = collect_trials(settings)
    target.mkdir(parents=True, exist_ok=True)
    write_parquet(rows, target / TRIALS_FILE)
    result = Exported(target, len(rows))
    for old in target.glob("best_*.yaml"):
        old.unlink()
    for k, row in enumerate(rank(rows, metrics, modes)[:top], start=1):
        config = {key[len("config/") :]: v for key, v in row.items() if key.startswith("config/")}
        try:
            cfg = Config.from_dict(config)
        except UserError as err:
            log.warning("trial %s: config not exportable (%s)", row["trial_id"], err)
            continue
        values = {m: row.get(f"final/{m}") for m in metrics}
        header = (
            f"# ckd-search export: rank {k} of study {settings.study_name}, trial {row['trial_id']} "
            f"({row['status']}, {row['epochs_run']} epochs): "
            + ", ".join(f"{m}={v}" for m, v in values.items())
            + "\n"
            f"# retrain: ckd-search train --config {target / f'best_{k}.yaml'}\n"
        )
        path = atomic_write_text(target / f"best_{k}.yaml", header + cfg.to_yaml())
        result.best.append(
            {"rank": k, "trial_id": row["trial_id"], "file": path.name, "status": row["status"], **values}
        )
    atomic_write_text(
        target / INDEX_FILE,
        json.dumps({"study": settings.study_name, "trials": len(rows), "best": result.best}, indent=1),
    )
    return result


def write_parquet(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Rows -> Parquet, one column type per column (mixed numbers become float, other mixes str)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    data = {c: _column([row.get(c) for row in rows]) for c in columns}
    table = pa.table(data) if columns else pa.table({"trial_id": pa.array([], pa.string())})
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


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
