"""``ckd-search analyze`` (report over search runs) and ``ckd-search reproduce`` (ablation table)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from ckd_search.errors import UserError
from ckd_search.storage import check_output_dir

log = logging.getLogger(__name__)

FIDELITY_FILE = "fidelity.json"


def _split_inputs(paths: list[str]) -> tuple[list[Path], list[Path]]:
    """Run directories and fidelity JSON files among the positional arguments."""
    run_dirs, fidelity = [], []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_file() and p.suffix == ".json":
            fidelity.append(p)
        elif p.is_dir():
            run_dirs.append(p)
        elif p.exists():
            raise UserError(f"{p}: not a run directory (nor a fidelity .json file)")
        else:
            raise UserError(f"{p}: no such run directory")
    return run_dirs, fidelity


def _read_fidelity(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable fidelity JSON ({err})") from None
    if not isinstance(data, dict) or "spearman" not in data or "rows" not in data:
        raise UserError(f"{path}: not a fidelity result (needs 'rows' and 'spearman'; see bench/fidelity.py)")
    return data


def analyze_runs(
    run_dirs: list[Path], out: Path, fidelity: list[dict[str, Any]] | tuple[()] = ()
) -> tuple[list[Any], Any, list[str]]:
    """Load the runs, write the report into ``out``, log it to each run's MLflow parent run.

    Returns the runs, the report and the ids of the MLflow runs it was logged to.
    """
    from ckd_search.analysis.report import build_report
    from ckd_search.analysis.results import load_runs
    from ckd_search.analysis.tracking import log_report

    runs = load_runs(run_dirs)
    report = build_report(runs, out, fidelity)
    logged = []
    for run_dir in run_dirs:
        run_id, skipped = log_report(run_dir, out)
        if run_id:
            logged.append(run_id)
        elif skipped:
            print(f"{run_dir}: report not logged to MLflow ({skipped})")
    return runs, report, logged


def run_analyze(args: argparse.Namespace) -> int:
    """Load the runs, write the report, log it to each run's MLflow parent run when there is one."""
    from ckd_search.analysis.results import describe_switch
    from ckd_search.analysis.results import pruned_flag

    run_dirs, fidelity_files = _split_inputs(list(args.run_dirs))
    extra = getattr(args, "fidelity", None)  # optional --fidelity FILE, if the CLI offers it
    if extra:
        fidelity_files += [Path(p) for p in ([extra] if isinstance(extra, str) else extra)]
    if not run_dirs:
        raise UserError("analyze needs at least one search run directory")
    fidelity_files += [d / FIDELITY_FILE for d in run_dirs if (d / FIDELITY_FILE).is_file()]
    fidelity = [_read_fidelity(p) for p in dict.fromkeys(fidelity_files)]
    out = check_output_dir(args.out)
    runs, report, logged = analyze_runs(run_dirs, out, fidelity)
    for run in runs:
        best = run.ranked().iloc[0]
        ranking = run.ranking
        value = f"best test top-1 {best['best_test_acc']:.4f}"
        if ranking.column != "best_test_acc":
            value = f"best {ranking.label} {best[ranking.column]:.4g}, its {value}"
        print(
            f"{run.name}: {len(run.trials)} trials, {value}{pruned_flag(best)} "
            f"(trial {best['trial_id']}, {describe_switch(best)})"
        )
    for label, front in report.pareto.items():
        print(f"{label}: Pareto front of {len(front)} trial(s): {', '.join(p['trial_id'] for p in front)}")
    print(f"wrote {report.html} ({len(report.figures)} figures inlined), {report.markdown}, {report.summary}")
    if logged:
        print(f"logged the report to MLflow parent run(s): {', '.join(logged)}")
    return 0


def run_reproduce(args: argparse.Namespace) -> int:
    """Train the four ablation variants over the seeds and write the table."""
    from ckd_search.analysis.reproduce import run_ablation
    from ckd_search.analysis.reproduce import seeds_for
    from ckd_search.cli import parse_overrides
    from ckd_search.config import Config
    from ckd_search.config import check_local_paths
    from ckd_search.engine import resolve_device

    sets = parse_overrides(args.set)
    for where, given in (("--set", sets.get("data.dataset")), ("--config", _file_dataset(args.config))):
        if given is not None and given != args.dataset:
            raise UserError(
                f"{where} sets data.dataset={given} but --dataset is {args.dataset}; pass --dataset {given}"
            )
    sets["data.dataset"] = args.dataset
    base = Config.from_yaml(args.config, sets) if args.config else Config.from_dict(sets)
    check_local_paths(base)  # bad data paths, teacher weights or device: refused before any write
    resolve_device(base.run.device)
    seeds = seeds_for(args.seeds)
    out = check_output_dir(args.out)
    print(f"reproduce on {args.dataset}: 4 variants x seeds {seeds}, {base.run.epochs} epochs each -> {out}")
    doc = run_ablation(base, seeds, out, progress=lambda line: print(line, flush=True))
    print(Path(doc["files"]["markdown"]).read_text())
    print(
        f"wrote {doc['files']['markdown']}, {doc['files']['json']}"
        + (f"; MLflow {doc['files']['mlflow']}" if "mlflow" in doc["files"] else "")
    )
    return 0


def _file_dataset(path: str | None) -> Any:
    """``data.dataset`` of a config YAML (nested or dotted), or None."""
    if not path:
        return None
    from ckd_search.config import load_yaml_mapping

    raw = load_yaml_mapping(path)
    section = raw.get("data")
    if isinstance(section, dict) and "dataset" in section:
        return section["dataset"]
    return raw.get("data.dataset")
