"""The paper's ablation on one data set: four variants, several seeds, mean +- std of best test top-1.

Variants (each is the base config plus its switches):

- ``tet_baseline``: DVS-only TET training (``loss.method=dvs_only``), no transfer;
- ``transfer``: He et al.'s knowledge transfer without KD (``kd.enabled=false``);
- ``ckd_kd_always``: CKD with KD always on (``kd.schedule=constant``, gamma = 1);
- ``ckd_phased``: CKD with the phased switch gamma(e) = sigma(-k (e - e_th)) (base e_th, k).

Seeds are He et al.'s (42, 1024, 90210) for up to three seeds, 0..n-1 otherwise. The data (and the
teacher, which depends on the seed) is prepared once per distinct ``prepare_key``.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckd_search.config import Config
from ckd_search.search.settings import DESCRIPTORS_FILE
from ckd_search.storage import atomic_write_text
from ckd_search.storage import output_dir

log = logging.getLogger(__name__)

HE_SEEDS = (42, 1024, 90210)


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    switches: Mapping[str, Any]


VARIANTS: tuple[Variant, ...] = (
    Variant("tet_baseline", "DVS-only TET baseline (no transfer)", {"loss.method": "dvs_only"}),
    Variant("transfer", "He et al. transfer, no KD", {"loss.method": "ckd", "kd.enabled": False}),
    Variant(
        "ckd_kd_always",
        "CKD, KD always on (gamma = 1)",
        {"loss.method": "ckd", "kd.enabled": True, "kd.schedule": "constant"},
    ),
    Variant(
        "ckd_phased",
        "CKD, phased KD switch gamma(e)",
        {"loss.method": "ckd", "kd.enabled": True, "kd.schedule": "phased"},
    ),
)


def seeds_for(n: int) -> list[int]:
    """He et al.'s seeds for n <= 3, else 0..n-1."""
    if n < 1:
        raise ValueError(f"seeds={n} must be >= 1")
    return list(HE_SEEDS[:n]) if n <= len(HE_SEEDS) else list(range(n))


def variant_config(base: Config, variant: Variant, seed: int) -> Config:
    return base.replace(**{**variant.switches, "run.seed": seed})


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for a single value: its spread is unknown, not 0)."""
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def _known(value: float) -> float | None:
    """None for NaN, so that summaries (JSON, MLflow) store an unknown spread as missing."""
    return None if math.isnan(value) else value


def _pm(mean: float, std: float | None) -> str:
    """'mean ± std' in percent; 'mean ± n/a' when the spread is unknown (one seed)."""
    spread = "n/a" if std is None or math.isnan(std) else f"{100 * std:.2f}"
    return f"{100 * mean:.2f} ± {spread}"


def run_ablation(
    base: Config,
    seeds: Sequence[int],
    out: str | Path,
    *,
    variants: Sequence[Variant] = VARIANTS,
    track: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train every (variant, seed), write ``ablation.json`` / ``ablation.md`` and log to MLflow.

    Args:
        base: config the variants start from (data set, sizes, epochs, e_th, k, ...).
        seeds: run seeds.
        out: output directory (also holds ``mlflow.db`` and ``descriptors.json``).
        variants: which variants to run.
        track: log to ``sqlite:///OUT/mlflow.db`` (one run per (variant, seed) under a parent).
        progress: called with one line per finished training.

    Returns:
        JSON-ready dict: ``dataset``, ``seeds``, ``runs`` (one row per training), ``summary`` (per
        variant: mean/std of best and final test top-1), ``files``.
    """
    from ckd_search.analysis.descriptors import dataset_descriptors
    from ckd_search.analysis.descriptors import write_descriptors
    from ckd_search.engine import fit
    from ckd_search.prepare import prepare
    from ckd_search.prepare import prepare_key

    out = output_dir(out)
    start = time.perf_counter()
    jobs = [(v, s, variant_config(base, v, s)) for v in variants for s in seeds]
    order: dict[str, list[tuple[Variant, int, Config]]] = {}
    for job in jobs:  # one prepare per distinct key, released when its runs are done
        order.setdefault(prepare_key(job[2]), []).append(job)
    tracker = None
    if track:
        from ckd_search.analysis.tracking import AblationTracker

        tracker = AblationTracker(
            out,
            f"reproduce-{base.data.dataset}",
            tags={"ckd.dataset": base.data.dataset, "ckd.seeds": ",".join(map(str, seeds))},
        )
    rows: list[dict[str, Any]] = []
    descriptors: dict[str, Any] | None = None
    status = "FAILED"
    try:
        for key, group in order.items():
            prepared = prepare(group[0][2])
            if descriptors is None:
                descriptors = dataset_descriptors(prepared, group[0][2])
                write_descriptors(out, descriptors)
            for variant, seed, cfg in group:
                t0 = time.perf_counter()
                result = fit(cfg, prepared=prepared)
                row = {
                    "variant": variant.name,
                    "seed": seed,
                    "best_test_acc": result.best_test_acc,
                    "final_test_acc": result.final_test_acc,
                    "epochs_run": result.epochs_run,
                    "teacher_test_acc": result.teacher_test_acc,
                    "seconds": time.perf_counter() - t0,
                    "prepare_key": key,
                }
                rows.append(row)
                if tracker is not None:
                    tracker.log_child(
                        f"{variant.name}-seed{seed}",
                        cfg.flat(),
                        result.metrics,
                        {"best_test_acc": result.best_test_acc, "final_test_acc": result.final_test_acc},
                        tags={"ckd.variant": variant.name, "ckd.seed": str(seed)},
                    )
                if progress is not None:
                    progress(
                        f"{variant.name:14s} seed {seed:>5}: best {result.best_test_acc:.4f} "
                        f"final {result.final_test_acc:.4f} ({row['seconds']:.0f} s)"
                    )
            del prepared
        status = "FINISHED"
    finally:
        summary = summarise(rows, variants)
        result_doc: dict[str, Any] = {
            "dataset": base.data.dataset,
            "seeds": list(seeds),
            "runs": rows,
            "summary": summary,
            "variants": {
                v.name: {"description": v.description, "switches": dict(v.switches)} for v in variants
            },
            "base_config": base.flat(),
            "elapsed_s": time.perf_counter() - start,
            "complete": status == "FINISHED",
        }
        json_path = atomic_write_text(out / "ablation.json", json.dumps(result_doc, indent=1, default=str))
        md_path = atomic_write_text(out / "ablation.md", ablation_markdown(result_doc, variants))
        files = {"json": str(json_path), "markdown": str(md_path)}
        result_doc["files"] = files
        if tracker is not None:
            metrics = {  # an unknown spread (one seed) is not logged
                f"{name}.{k}": v
                for name, s in summary.items()
                for k, v in s.items()
                if k != "n" and v is not None
            }
            extra = [p for p in (out / DESCRIPTORS_FILE,) if p.is_file()]
            tracker.finish(metrics, [json_path, md_path, *extra], status=status)
            files["mlflow"] = tracker.uri
    return result_doc


def summarise(
    rows: Sequence[Mapping[str, Any]], variants: Sequence[Variant]
) -> dict[str, dict[str, float | None]]:
    """Per variant: n, mean and std of best and final test top-1 over seeds (std None for one seed)."""
    out: dict[str, dict[str, float | None]] = {}
    for v in variants:
        mine = [r for r in rows if r["variant"] == v.name]
        if not mine:
            continue
        best_m, best_s = mean_std([r["best_test_acc"] for r in mine])
        fin_m, fin_s = mean_std([r["final_test_acc"] for r in mine])
        out[v.name] = {
            "n": len(mine),
            "best_mean": best_m,
            "best_std": _known(best_s),
            "final_mean": fin_m,
            "final_std": _known(fin_s),
        }
    return out


def ablation_markdown(doc: Mapping[str, Any], variants: Sequence[Variant] = VARIANTS) -> str:
    """The ablation table in Markdown: mean +- std (percent) of best and final test top-1."""
    base = doc.get("base_config", {})
    lines = [
        f"# Ablation on {doc['dataset']} ({len(doc['seeds'])} seeds: {', '.join(map(str, doc['seeds']))})",
        "",
        f"Best test top-1 over epochs (He et al.'s protocol), mean +- sample std over seeds, in percent. "
        f"run.epochs={base.get('run.epochs')}, data.timesteps={base.get('data.timesteps')}, "
        f"data.size={base.get('data.size')}, model.width={base.get('model.width')}, "
        f"kd.e_th={_e_th(base.get('kd.e_th'))}, kd.k={base.get('kd.k')}.",
        "",
        "| variant | description | best top-1 (%) | final top-1 (%) | seeds | per seed (best, %) |",
        "|---|---|---|---|---|---|",
    ]
    for v in variants:
        s = doc["summary"].get(v.name)
        if s is None:
            continue
        per_seed = ", ".join(f"{100 * r['best_test_acc']:.2f}" for r in doc["runs"] if r["variant"] == v.name)
        lines.append(
            f"| {v.name} | {v.description} | {_pm(s['best_mean'], s['best_std'])} | "
            f"{_pm(s['final_mean'], s['final_std'])} | {int(s['n'])} | {per_seed} |"
        )
    if not doc.get("complete", True):
        lines += ["", "**Incomplete: the study stopped early; the table holds the runs that finished.**"]
    # the CKD variants of one seed share its teacher: count each seed's teacher once
    by_seed = {
        r.get("seed"): r["teacher_test_acc"] for r in doc["runs"] if r.get("teacher_test_acc") is not None
    }
    teacher = list(by_seed.values())
    if teacher:
        m, s = mean_std(teacher)
        lines += ["", f"Teacher test top-1: {_pm(m, s)} % (one teacher per seed)."]
    return "\n".join(lines) + "\n"


def _e_th(value: Any) -> str:
    return "run.epochs/2 (default)" if value is None else str(value)
