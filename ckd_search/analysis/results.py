"""Load a search run directory into a per-trial table and a per-epoch table.

A run directory holds Ray Tune trial folders, each with ``result.json`` (JSON lines, one per reported
epoch: engine metrics plus Ray fields such as ``trial_id``, ``training_iteration`` and ``config``) and
``params.json``; optionally ``trials.parquet`` (``ckd-search export``), ``descriptors.json`` (data-set
descriptors), ``fidelity.json`` and ``mlflow.db``. Every ``result.json`` below the directory is read,
so nested layouts (``RUN_DIR/<experiment>/<trial>/result.json``) work too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ckd_search.analysis.space_facts import SpaceFacts
from ckd_search.analysis.space_facts import read_space_facts
from ckd_search.config import Config
from ckd_search.config import dotted_items
from ckd_search.config import load_yaml_mapping
from ckd_search.errors import UserError
from ckd_search.search.outcome import finite
from ckd_search.search.settings import DESCRIPTORS_FILE
from ckd_search.search.settings import JOURNAL_FILE
from ckd_search.search.settings import SETTINGS_FILE
from ckd_search.search.settings import SPACE_FILE  # its ``fixed`` section is a base config too
from ckd_search.search.settings import TRIAL_DIR_PREFIX
from ckd_search.search.settings import SearchSettings
from ckd_search.storage import read_json_lines
from ckd_search.storage import read_json_object

log = logging.getLogger(__name__)

METRIC = "best_test_acc"
# Ray bookkeeping fields that are not metrics.
RAY_FIELDS = frozenset(
    {
        "trial_id",
        "config",
        "date",
        "timestamp",
        "pid",
        "hostname",
        "node_ip",
        "done",
        "experiment_id",
        "experiment_tag",
        "checkpoint_dir_name",
        "should_checkpoint",
        "time_this_iter_s",
        "time_since_restore",
        "iterations_since_restore",
    }
)
# Base-config files a run directory may hold; trial configs are laid over them.
BASE_CONFIG_FILES = ("base_config.yaml", "config.yaml")
PARQUET_FILES = ("trials.parquet", "export/trials.parquet")  # ``ckd-search export`` output
#: ``ckd-search export`` / journal status -> the status this table uses.
EXPORT_STATUS = {"completed": "complete", "pruned": "pruned", "failed": "error", "incomplete": "incomplete"}
#: Files that mark the root of one search (a folder holding several is refused).
SEARCH_MARKERS = (SETTINGS_FILE, SPACE_FILE)


@dataclass
class SearchRun:
    """One search run directory, loaded.

    Attributes:
        run_dir: the directory.
        name: a label (the data set name when known, else the directory name).
        trials: one row per trial: ``trial_id``, ``status`` ('complete' | 'pruned' | 'error' |
            'incomplete': stopped with the search, not by its scheduler),
            ``epochs_run``, ``best_test_acc``, ``final_test_acc``, ``trial_dir`` and one column per
            dotted config key (``kd.e_th``, ``kd.k``, ...; full config, defaults filled in).
            For each study metric (``objectives``) also ``final/<metric>``: its value at the
            trial's last epoch (what the searcher was told).
        epochs: one row per (trial, epoch): ``trial_id``, ``epoch`` and every numeric metric.
        descriptors: ``RUN_DIR/descriptors.json``; computed from the best trial's config when a
            search run lacks the file (:func:`ckd_search.analysis.descriptors.descriptors_for_run`).
        max_epoch: the largest epoch any trial reached.
        notes: remarks for the report (defaults filled in, files skipped, ...).
        objectives: (metric, mode) of each study metric (``RUN_DIR/space.yaml``); two or more make
            a multi-objective search.
        facts: what the space file says of log scales, conditions and ASHA's max_t.
    """

    run_dir: Path
    name: str
    trials: pd.DataFrame
    epochs: pd.DataFrame
    descriptors: dict[str, Any] = field(default_factory=dict)
    max_epoch: int = 0
    notes: list[str] = field(default_factory=list)
    facts: SpaceFacts = field(default_factory=SpaceFacts)

    @property
    def objectives(self) -> tuple[tuple[str, str], ...]:
        return self.facts.objectives

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def config_keys(self) -> list[str]:
        """The dotted config columns of the trial table."""
        return [c for c in self.trials.columns if "." in c]

    def varying(self, keys: Iterable[str] | None = None) -> list[str]:
        """Config keys (of ``keys``, default all) that take more than one value across trials."""
        out = []
        for key in keys if keys is not None else self.config_keys:
            if key in self.trials and self.trials[key].astype(str).nunique(dropna=False) > 1:
                out.append(key)
        return out

    @property
    def ranking(self) -> Ranking:
        """What "best" means in this run's report: the study's own metric when it has one."""
        return ranking_for(self.objectives)

    def ranked(self, statuses: tuple[str, ...] = ("complete",)) -> pd.DataFrame:
        """Trials with the given statuses, best first (all trials if none has such a status)."""
        return rank_trials(self.trials, statuses, self.ranking)


@dataclass(frozen=True)
class Ranking:
    """A trial-table column that orders trials, and whether larger values are better."""

    column: str = METRIC
    mode: str = "max"
    label: str = "best test top-1"

    @property
    def ascending(self) -> bool:
        return self.mode == "min"

    @property
    def cmap(self) -> str:
        """viridis, reversed for a metric to minimise, so the best trials are yellow either way."""
        return "viridis_r" if self.ascending else "viridis"

    def best_index(self, values: ArrayLike) -> int:
        """Position of the best of ``values`` (NaN never wins unless all are NaN)."""
        arr = np.asarray(values, dtype=float)
        if np.isnan(arr).all():
            return 0
        return int(np.nanargmin(arr) if self.ascending else np.nanargmax(arr))


ACCURACY = Ranking()


def ranking_for(objectives: Sequence[tuple[str, str]]) -> Ranking:
    """The ranking of a search with these (metric, mode) objectives.

    A single-objective search is ranked by its own metric, as its searcher and ``ckd-search
    export`` rank it: the value at a trial's last epoch (``final/<metric>``; for ``best_test_acc``
    that is the ``best_test_acc`` column itself). A multi-objective search, or one whose
    ``space.yaml`` is missing, is ranked by best test top-1 (He et al.'s protocol); its objectives
    get the Pareto section.
    """
    if len(objectives) != 1 or objectives[0][0] == METRIC:
        return ACCURACY
    metric, mode = objectives[0]
    return Ranking(f"final/{metric}", mode, f"{metric} at the last epoch ({mode})")


def rank_trials(
    trials: pd.DataFrame, statuses: tuple[str, ...] = ("complete",), ranking: Ranking = ACCURACY
) -> pd.DataFrame:
    """``trials`` with the given statuses, best first (all of them if none has such a status)."""
    sel = trials[trials["status"].isin(statuses)]
    if sel.empty:
        sel = trials
    # Ties go to the lower trial id, as in ``ckd-search export`` and the MLflow summary.
    return sel.sort_values(
        [ranking.column, "trial_id"], ascending=[ranking.ascending, True], na_position="last", kind="stable"
    )


def load_runs(run_dirs: Iterable[str | Path], compute_descriptors: bool = True) -> list[SearchRun]:
    """Load several run directories; a missing directory or one without trials is a UserError."""
    return [load_run(d, compute_descriptors) for d in run_dirs]


def load_run(run_dir: str | Path, compute_descriptors: bool = True) -> SearchRun:
    """Load one run directory (``**/result.json``, else ``[export/]trials.parquet``).

    With ``compute_descriptors``, a search run directory without ``descriptors.json`` gets them
    computed (and the file written) from its best trial's config.
    """
    root = Path(run_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: not a directory")
    notes: list[str] = []
    base = _base_config(root, notes)
    facts = read_space_facts(root, notes)
    objectives = facts.objectives
    metrics = [m for m, _ in objectives]
    files = sorted(root.rglob("result.json")) or sorted(
        _external_experiment(root, notes).rglob("result.json")
    )
    files = _one_search(root, files, notes)
    records: dict[str, dict[str, Any]] = {}
    for path in files:
        _read_trial(path, records, notes)
    for trial_id in superseded_trials(root) & set(records):
        del records[trial_id]
        notes.append(f"trial {trial_id} left out: a resume handed its Optuna trial on, or it was orphaned")
    _merge_ledger(root, records, notes)
    if records:
        trials, epochs = _tables(records, base, notes, metrics, facts.epoch_cap)
        _journal_status(root, trials)
    elif parquet := next((p for p in PARQUET_FILES if (root / p).is_file()), None):
        trials, epochs = _from_parquet(root / parquet, base, notes, metrics, facts.epoch_cap)
    else:
        unreadable = [n for n in notes if "unreadable" in n]
        raise UserError(
            f"{root}: no trial results (no **/result.json with records, no trials.parquet)"
            + (f"; {unreadable[0]}" if unreadable else "")
        )
    descriptors = read_json_object(root / DESCRIPTORS_FILE) or {}
    if not descriptors and compute_descriptors and (root / SETTINGS_FILE).is_file():
        from ckd_search.analysis.descriptors import descriptors_for_run

        ranking = ranking_for(objectives)
        descriptors = descriptors_for_run(root, rank_trials(trials, ranking=ranking).iloc[0].to_dict(), notes)
    name = _run_name(root, trials, descriptors)
    if not (trials["status"] == "complete").any():
        reached = trials["epochs_run"]
        notes.append(
            f"no trial is complete: 'best' is the best of {len(trials)} unfinished trial(s) at mixed "
            f"budgets ({int(reached.min())}-{int(reached.max())} epochs; longer ones rank higher), "
            "flagged (pruned, N/E epochs)"
        )
    max_epoch = int(trials["epochs_run"].max()) if len(trials) else 0
    log.info(
        "%s: %d trials (%d complete), %d epoch rows",
        root,
        len(trials),
        int((trials["status"] == "complete").sum()),
        len(epochs),
    )
    return SearchRun(root, name, trials, epochs, descriptors, max_epoch, notes, facts)


# --- reading -----------------------------------------------------------------------------------
def _base_config(root: Path, notes: list[str]) -> dict[str, Any]:
    """Flat base config for keys a trial config lacks: ``base_config.yaml``, ``config.yaml`` or the
    ``fixed`` section of ``space.yaml`` in RUN_DIR (empty if none)."""
    for name in BASE_CONFIG_FILES:
        path = root / name
        if path.is_file():
            try:
                flat = Config.from_yaml(path).flat()
            except UserError as err:
                notes.append(f"{name} ignored: {err}")
                continue
            notes.append(f"trial configs laid over {name}")
            return flat
    space = root / SPACE_FILE
    if space.is_file():
        try:
            fixed = load_yaml_mapping(space).get("fixed") or {}
            return Config.from_dict(dict(fixed)).flat() if isinstance(fixed, Mapping) else {}
        except UserError as err:
            notes.append(f"{SPACE_FILE} 'fixed' ignored: {err}")
    return {}


def _external_experiment(root: Path, notes: list[str]) -> Path:
    """The Ray experiment folder named by ``RUN_DIR/search.yaml`` when it lies outside RUN_DIR."""
    try:
        settings = SearchSettings.raw(root)
    except UserError as err:
        notes.append(f"{SETTINGS_FILE} unreadable ({err})")
        return root
    storage, study = settings.get("storage_path"), settings.get("study_name")
    if isinstance(storage, str) and isinstance(study, str) and "://" not in storage:
        path = Path(storage).expanduser() / study
        if path.is_dir():
            return path
    return root


def _one_search(root: Path, files: Sequence[Path], notes: list[str]) -> list[Path]:
    """The trial files of the one search ``root`` stands for (each search's folder holds its
    search.yaml / space.yaml; ranking several together mixes studies).

    A folder that is a search itself keeps its own trials and leaves out those of searches in its
    subfolders (a run folder reused as a parent, say), with a note; any other folder whose trials
    belong to more than one search is a UserError.
    """
    below = {f: _search_folder(f.parent, root) for f in files if f.is_relative_to(root)}
    owners = {owner for owner in below.values() if owner is not None}  # stored elsewhere: one search
    if _is_search_folder(root):
        nested = sorted(str(o.relative_to(root)) for o in owners - {root})
        if nested:
            notes.append(f"left out the trials of {len(nested)} other search(es) below: {', '.join(nested)}")
        return [f for f in files if below.get(f, root) == root]
    if len(owners) > 1:
        names = ", ".join(sorted(str(o.relative_to(root)) or "." for o in owners))
        raise UserError(f"{root}: holds {len(owners)} searches ({names}); analyze each folder on its own")
    return list(files)


def _is_search_folder(folder: Path) -> bool:
    return any((folder / name).is_file() for name in SEARCH_MARKERS)


def _search_folder(folder: Path, root: Path) -> Path | None:
    """The nearest folder from ``folder`` up to ``root`` that holds a search's settings or space."""
    for candidate in (folder, *folder.parents):
        if _is_search_folder(candidate):
            return candidate
        if candidate == root:
            return None
    return None


def _merge_ledger(root: Path, records: dict[str, dict[str, Any]], notes: list[str]) -> None:
    """Lay each trial's ``result.json`` rows over the epoch ledger's, as ``ckd-search export`` does
    (Ray can lose ``result.json`` rows when a trial is retried; the ledger cannot)."""
    from ckd_search.search.export import ledger_histories
    from ckd_search.search.export import merge_histories
    from ckd_search.search.ledger import LEDGER_FILE

    ledger = ledger_histories(root / LEDGER_FILE)
    added = 0
    for trial_id, entry in records.items():
        logged = ledger.get(trial_id)
        if not logged:
            continue
        stored = {int(r["epoch"]): r for r in _epoch_rows(trial_id, entry["rows"])}
        merged = merge_histories(stored, logged)
        added += len(merged) - len(stored)
        entry["rows"] = [{**row, "epoch": epoch} for epoch, row in merged.items()]
    if added:
        notes.append(f"{added} epoch(s) missing from result.json restored from the epoch ledger")


def _journal_status(root: Path, trials: pd.DataFrame) -> None:
    """Set the status of the trials the study's Optuna journal records as ended to what the search
    told Optuna, as ``ckd-search export`` does for them. A trial short of its budget that the
    journal does not record as ended was stopped with the search (killed, interrupted) or is still
    running: ``incomplete``, as export calls it, not ``pruned``."""
    from ckd_search.search.export import journal_outcomes

    journal = root / JOURNAL_FILE
    try:
        study_name = SearchSettings.raw(root).get("study_name") if journal.is_file() else None
        if not isinstance(study_name, str):
            return
        ended = journal_outcomes(journal, study_name)
    except (UserError, KeyError, ValueError, OSError):
        return
    for i, trial_id in trials["trial_id"].items():
        if str(trial_id) in ended:
            trials.at[i, "status"] = EXPORT_STATUS[ended[str(trial_id)][0]]
        elif trials.at[i, "status"] == "pruned":
            trials.at[i, "status"] = "incomplete"


def _read_trial(path: Path, records: dict[str, dict[str, Any]], notes: list[str]) -> None:
    """Add the JSON lines of one ``result.json`` to ``records[trial_id]``; bad lines are skipped."""
    folder = path.parent
    default_id = folder.name.removeprefix(TRIAL_DIR_PREFIX)  # an empty result.json names no trial
    params = read_json_object(folder / "params.json") or {}
    try:
        lines, bad = read_json_lines(path)
    except OSError as err:
        notes.append(f"{path}: unreadable ({err})")
        return
    if bad:
        notes.append(f"{path}: {bad} unreadable line(s) skipped")
    trial_id = str(next((r["trial_id"] for r in lines if r.get("trial_id")), default_id))
    entry = records.setdefault(trial_id, {"rows": [], "config": {}, "dir": str(folder), "error": False})
    entry["rows"].extend(lines)
    config = next((r["config"] for r in reversed(lines) if isinstance(r.get("config"), Mapping)), params)
    entry["config"].update(dotted_items(config))
    entry["error"] = entry["error"] or (folder / "error.txt").exists() or (folder / "error.pkl").exists()


def superseded_trials(root: Path) -> set[str]:
    """Tune trial ids whose folders do not stand for a trial of the study (its Optuna journal says).

    A driver that died leaves the folders of its running trials; on resume their Optuna trials are
    adopted by new Tune trials (``ckd:ray_trial_ids`` lists both ids, the last one current) or
    marked FAIL as orphaned (when nothing adopts them, or when they had reported epochs: a fresh
    Optuna trial then reruns their parameters). Counting those folders too would add trials the
    search never ran to the end.
    """
    journal = root / JOURNAL_FILE
    if not journal.is_file():
        return set()
    try:
        study_name = SearchSettings.raw(root).get("study_name")
    except UserError:
        return set()
    if not isinstance(study_name, str):
        return set()
    from ckd_search.search.optuna_search import superseded_ray_trials

    try:
        return superseded_ray_trials(journal, study_name)
    except (KeyError, ValueError, OSError):
        return set()


def _epoch_rows(trial_id: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Numeric metrics per epoch; a replayed epoch (restore) keeps its last report."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for i, row in enumerate(rows):
        epoch = row.get("epoch", row.get("training_iteration", i + 1))
        try:
            e = int(float(epoch))
        except (TypeError, ValueError):
            continue
        metrics: dict[str, Any] = {
            k: float(v)
            for k, v in row.items()
            if k not in RAY_FIELDS and isinstance(v, int | float) and not isinstance(v, bool)
        }
        metrics.update(trial_id=trial_id, epoch=e)
        by_epoch[e] = metrics
    return [by_epoch[e] for e in sorted(by_epoch)]


def full_config(flat: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A trial's flat config completed with the base config and the Config defaults.

    Keys that are not config keys (search bookkeeping) are kept as given. If the values do not
    validate, the raw values are laid over the defaults without validation.
    """
    known = {k: v for k, v in flat.items() if k in _DEFAULTS}
    merged = {**dict(base or {}), **known}
    try:
        full = Config.from_dict(merged).flat()
    except UserError:
        full = {**_DEFAULTS, **merged}
    extra = {k: v for k, v in flat.items() if k not in _DEFAULTS}
    return {**full, **extra}


_DEFAULTS: dict[str, Any] = Config().flat()


def _tables(
    records: dict[str, dict[str, Any]],
    base: dict[str, Any],
    notes: list[str],
    metrics: list[str],
    epoch_cap: float | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    epoch_rows: list[dict[str, Any]] = []
    trial_rows: list[dict[str, Any]] = []
    empty = 0
    for trial_id, entry in records.items():
        rows = _epoch_rows(trial_id, entry["rows"])
        if not rows:
            empty += 1
            continue
        epoch_rows.extend(rows)
        accs = [r["test_acc"] for r in rows if finite(r.get("test_acc")) is not None]
        bests = [r["best_test_acc"] for r in rows if finite(r.get("best_test_acc")) is not None]
        best = max(accs + bests) if accs or bests else math.nan
        final = accs[-1] if accs else math.nan
        budgets = [r["budget_epochs"] for r in rows if finite(r.get("budget_epochs")) is not None]
        row = {
            "trial_id": trial_id,
            "epochs_run": int(rows[-1]["epoch"]),
            "best_test_acc": best,
            "final_test_acc": final,
            "error": entry["error"],
            "trial_dir": entry["dir"],
            "budget_epochs": budgets[-1] if budgets else math.nan,
        }
        row.update({f"final/{m}": _last_value(rows, m) for m in metrics})
        row.update(full_config(entry["config"], base))
        trial_rows.append(row)
    if empty:
        notes.append(f"{empty} trial(s) without any reported epoch left out")
    if not trial_rows:
        raise UserError("no trial reported a single epoch")
    trials = _finish_trials(pd.DataFrame(trial_rows), notes, epoch_cap)
    epochs = pd.DataFrame(epoch_rows)
    lead = ["trial_id", "epoch"]
    epochs = epochs[lead + sorted(c for c in epochs.columns if c not in lead)]
    return trials, epochs


def _from_parquet(
    path: Path, base: dict[str, Any], notes: list[str], metrics: list[str], epoch_cap: float | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``ckd-search export`` table: ``config/<key>``, ``final/<metric>``, ``best/<metric>`` columns,
    ``status`` completed / pruned / failed / incomplete (no per-epoch results)."""
    raw = pd.read_parquet(path)
    notes.append(f"trials read from {path.relative_to(path.parents[1])} (no per-epoch results)")
    rows = []
    for i, rec in enumerate(raw.to_dict("records")):
        flat = {k.removeprefix("config/"): plain_scalar(v) for k, v in rec.items() if k.startswith("config/")}
        final = {k.removeprefix("final/"): v for k, v in rec.items() if k.startswith("final/")}
        best_of = {k.removeprefix("best/"): v for k, v in rec.items() if k.startswith("best/")}
        candidates = [best_of.get(METRIC), final.get(METRIC), rec.get(METRIC)]
        best = max((float(v) for v in candidates if finite(v) is not None), default=math.nan)
        status = str(rec.get("status", "")).lower()
        row = {
            "trial_id": str(rec.get("trial_id", i)),
            "best_test_acc": best,
            "final_test_acc": float(final.get("test_acc", rec.get("final_test_acc", math.nan))),
            "epochs_run": int(rec.get("epochs_run") or final.get("epoch") or 0),
            "error": status in ("failed", "error"),
            "trial_dir": str(path.parent),
            "budget_epochs": final.get("budget_epochs", math.nan),
            "export_status": status,
        }
        row.update({f"final/{m}": _float(final.get(m)) for m in metrics})
        row.update(full_config(flat, base))
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no trials")
    trials = _finish_trials(pd.DataFrame(rows), notes, epoch_cap)
    known = trials["export_status"].isin(list(EXPORT_STATUS))  # the search's own verdict
    trials.loc[known, "status"] = trials.loc[known, "export_status"].map(EXPORT_STATUS)
    return trials.drop(columns=["export_status"]), pd.DataFrame(columns=["trial_id", "epoch"])


def _last_value(rows: list[dict[str, Any]], metric: str) -> float:
    """``metric`` at the last epoch that reported it (NaN if none did)."""
    return next((float(r[metric]) for r in reversed(rows) if finite(r.get(metric)) is not None), math.nan)


def _float(value: Any) -> float:
    number = finite(value)
    return math.nan if number is None else number


def plain_scalar(value: Any) -> Any:
    """Parquet hands back NumPy scalars; the config wants plain Python values."""
    return value.item() if hasattr(value, "item") and callable(value.item) else value


def _finish_trials(trials: pd.DataFrame, notes: list[str], epoch_cap: float | None = None) -> pd.DataFrame:
    """Infer the status, fill the implicit switch point, order columns."""
    # A trial is complete when it reached its budget, as the search and export count it: the
    # ``budget_epochs`` it reported (the search trainable adds it; run.epochs may be searched),
    # capped by ASHA's max_t (``epoch_cap``). The longest trial stands in for a budget not reported.
    # A reported budget is never capped by the longest trial: a search still running (or killed)
    # has trials short of their budget, and those are not complete.
    longest = float(trials["epochs_run"].max())
    budget = trials["budget_epochs"] if "budget_epochs" in trials else pd.Series(math.nan, index=trials.index)
    budget = budget.astype(float)
    if epoch_cap is None and budget.isna().any():
        notes.append(
            f"{int(budget.isna().sum())} trial(s) reported no budget and there is no readable space file: "
            f"they count as complete at the longest trial's {longest:g} epochs (a guess)"
        )
    target = budget.fillna(longest)
    target = target if epoch_cap is None else target.clip(upper=epoch_cap)
    trials["target_epochs"] = target
    # Reaching the budget wins over an error file: Ray keeps error.txt in the folder of a trial that
    # failed once and then finished from its checkpoint. One that failed after its last epoch is
    # told apart only by the Optuna journal, which corrects the status when there is one.
    status = [
        "complete" if n >= t else ("error" if err else "pruned")
        for n, t, err in zip(trials["epochs_run"], target, trials["error"])
    ]
    trials.insert(1, "status", status)
    trials = trials.drop(columns=["error"])
    if {"kd.e_th", "kd.units", "run.epochs"} <= set(trials.columns):
        implicit = trials["kd.e_th"].isna() & (trials["kd.units"] == "epoch")
        if implicit.any():
            trials.loc[implicit, "kd.e_th"] = trials.loc[implicit, "run.epochs"] / 2.0
            notes.append(f"kd.e_th unset in {int(implicit.sum())} trial(s): taken as run.epochs/2")
    lead = ["trial_id", "status", "epochs_run", "best_test_acc", "final_test_acc"]
    rest = sorted(c for c in trials.columns if c not in lead)
    return trials[lead + rest].reset_index(drop=True)


def iters_per_epoch(train_samples: Any, batch_size: Any) -> int | None:
    """Optimiser steps per epoch: whole batches only (the training loader drops the last partial
    one); None when either number is unknown."""
    if finite(train_samples) is None or finite(batch_size) is None or float(batch_size) < 1:
        return None
    return max(1, int(float(train_samples)) // int(float(batch_size)))


def switch_in_epochs(trials: pd.DataFrame, train_samples: Any) -> tuple[pd.DataFrame, str | None]:
    """``trials`` with the phased switch of ``kd.units=iteration`` trials expressed in epochs, and a
    note on what was done (None when no trial counts in iterations).

    gamma = sigma(-k (i - e_th)) over iterations i = e * n is sigma(-(k n) (e - e_th / n)) over epochs,
    so e_th becomes e_th / n and k becomes k * n, with n = ``train_samples`` // each trial's own
    ``optim.batch_size``; an unset e_th is half the run. Without ``train_samples`` (no descriptor)
    those trials are left out. Only phased trials count in ``kd.units``: the adaptive schedule's k
    is per unit of P_replace and a constant one has none, so those rows are kept as they are.
    """
    if "kd.units" not in trials or trials.empty:
        return trials, None
    rows = (trials["kd.units"] == "iteration") & (trials.apply(switch_kind, axis=1) == "phased")
    if not rows.any():
        return trials, None
    out = trials.copy()
    counted = f"{int(rows.sum())} trial(s) counting e_th in iterations"
    batch = (
        out["optim.batch_size"]
        if "optim.batch_size" in out
        else pd.Series(_DEFAULTS["optim.batch_size"], out.index)
    )
    n = pd.Series([iters_per_epoch(train_samples, b) for b in batch], index=out.index, dtype=float)
    if n[rows].isna().any():
        return out[~rows], f"{counted} left out (iterations per epoch unknown)"
    e_th = out.loc[rows, "kd.e_th"] if "kd.e_th" in out else pd.Series(math.nan, index=out.index[rows])
    half_run = out.loc[rows, "run.epochs"] / 2.0 if "run.epochs" in out else math.nan
    out.loc[rows, "kd.e_th"] = (e_th.astype(float) / n[rows]).fillna(half_run)
    if "kd.k" in out:
        out.loc[rows, "kd.k"] = out.loc[rows, "kd.k"].astype(float) * n[rows]
    counts = ", ".join(str(int(v)) for v in sorted(n[rows].unique()))
    return out, f"{counted} shown in epochs (e_th / n, k x n for n = {counts} iterations per epoch)"


def switch_kind(best: Mapping[str, Any]) -> str:
    """'phased' / 'adaptive' / 'constant' / 'off' (KD disabled): what a trial's switch was."""
    if not best.get("kd.enabled", True) or best.get("loss.method") == "dvs_only":
        return "off"
    return str(best.get("kd.schedule", "phased"))


def describe_switch(best: Mapping[str, Any]) -> str:
    """A trial's switch in words, with only the parameters that acted (adaptive k labelled so)."""
    kind = switch_kind(best)
    if kind == "off":
        return "KD disabled"
    if kind == "constant":
        return "constant, gamma = 1"
    if kind == "adaptive":
        return f"adaptive, p_th={_short(best.get('kd.p_th'))}, adaptive k={_short(best.get('kd.k'))}"
    return f"{kind}, e_th={_short(best.get('kd.e_th'))}, k={_short(best.get('kd.k'))}"


def pruned_flag(best: Mapping[str, Any]) -> str:
    """' (pruned, N/E epochs)' for a trial that did not reach its budget ('' for a complete one)."""
    if best.get("status") == "complete":
        return ""
    target = finite(best.get("target_epochs"))
    of = f"/{target:g}" if target is not None else ""
    return f" ({best.get('status', 'pruned')}, {int(best.get('epochs_run', 0))}{of} epochs)"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _run_name(root: Path, trials: pd.DataFrame, descriptors: Mapping[str, Any]) -> str:
    for key in ("name", "dataset"):
        if isinstance(descriptors.get(key), str):
            return str(descriptors[key])
    if "data.dataset" in trials and trials["data.dataset"].nunique() == 1:
        return str(trials["data.dataset"].iloc[0])
    return root.name
