"""The analysis report: one self-contained HTML file (PNGs inlined as base64) and a Markdown summary.

``build_report(runs, out)`` writes ``report.html``, ``report.md``, ``summary.json`` and
``figures/*.png`` under ``out``. Each search run gets its own sections (importance, the (e_th, k)
plane of phased trials and the (p_th, k) plane of adaptive ones, switch curves, learning curves,
parallel coordinates, schedule kinds, and the Pareto front of a multi-objective search); then the
data sets side by side (descriptors next to each data set's best switch) and the fidelity study.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import pandas as pd

from ckd_search.analysis import plots
from ckd_search.analysis.importance import Importances
from ckd_search.analysis.importance import candidate_params
from ckd_search.analysis.importance import compute_importances
from ckd_search.analysis.importance import mask_inactive
from ckd_search.analysis.pareto import pareto_mask
from ckd_search.analysis.results import ACCURACY
from ckd_search.analysis.results import METRIC
from ckd_search.analysis.results import Ranking
from ckd_search.analysis.results import SearchRun
from ckd_search.analysis.results import pruned_flag
from ckd_search.analysis.results import rank_trials
from ckd_search.analysis.results import switch_in_epochs
from ckd_search.analysis.results import switch_kind
from ckd_search.storage import atomic_write_text
from ckd_search.storage import output_dir

log = logging.getLogger(__name__)

TOP = 5
TABLE_ROWS = 10
SPREAD_TOP = 3  # the data-set table shows the switch's spread over this many best trials
# Descriptor keys shown in the data-set table, in order (others follow).
DESCRIPTOR_KEYS = (
    "classes",
    "train_samples",
    "test_samples",
    "timesteps",
    "size",
    "mean_events_per_sample",
    "event_density",
    "cka_rgb_dvs",
    "rgb_dvs_gap",
)


@dataclass
class Section:
    """One report section: text, tables and figures, rendered to HTML and Markdown alike."""

    title: str
    level: int = 2
    text: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, Path]] = field(default_factory=list)


@dataclass
class ReportResult:
    """What ``build_report`` wrote and the numbers behind it."""

    html: Path
    markdown: Path
    summary: Path
    figures: list[Path]
    importances: dict[str, dict[str, dict[str, float]]]
    sections: list[str]
    pareto: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # label -> front (MO runs)


def build_report(
    runs: Sequence[SearchRun], out: str | Path, fidelity: Sequence[Mapping[str, Any]] = (), top: int = TOP
) -> ReportResult:
    """Write the report for ``runs`` (and fidelity results) into ``out``."""
    out = Path(out)
    fig_dir = out / "figures"
    output_dir(out)
    fig_dir.mkdir(exist_ok=True)
    labels = _labels(runs)
    sections: list[Section] = [_overview(runs, labels)]
    summary: dict[str, Any] = {"runs": {}, "generated": time.strftime("%Y-%m-%d %H:%M:%S")}
    importances: dict[str, dict[str, dict[str, float]]] = {}
    for run, label in zip(runs, labels):
        run_sections, run_summary, imp = _run_sections(run, label, fig_dir, top)
        sections.extend(run_sections)
        summary["runs"][label] = run_summary
        importances[label] = imp.by_method
    sections.append(_datasets_section(runs, labels))
    for i, fid in enumerate(fidelity):
        sections.append(_fidelity_section(fid, fig_dir / f"fidelity_{i}.png"))
        summary.setdefault("fidelity", []).append(fid.get("spearman", {}))
    title = "CKD switching analysis: " + ", ".join(labels)
    html_path = atomic_write_text(out / "report.html", render_html(title, sections))
    md_path = atomic_write_text(out / "report.md", render_markdown(title, sections, out))
    summary_path = atomic_write_text(out / "summary.json", json.dumps(_jsonable(summary), indent=1))
    figures = [p for s in sections for _, p in s.figures]
    pareto = {label: run["pareto"] for label, run in summary["runs"].items() if "pareto" in run}
    titles = [s.title for s in sections]
    return ReportResult(html_path, md_path, summary_path, figures, importances, titles, pareto)


def _labels(runs: Sequence[SearchRun]) -> list[str]:
    """One label per run, unique, and unique once slugged (figure files and summary keys use them):
    the data set's name, then its folder's name where names repeat, then a number."""
    names = [r.name for r in runs]
    labels = [n if names.count(n) == 1 else f"{n} ({r.run_dir.name})" for n, r in zip(names, runs)]
    slugs = [_slug(label) for label in labels]
    return [
        label if slugs.count(slug) == 1 else f"{label} #{slugs[: i + 1].count(slug)}"
        for i, (label, slug) in enumerate(zip(labels, slugs))
    ]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "run"


# --- sections ----------------------------------------------------------------------------------
def _overview(runs: Sequence[SearchRun], labels: Sequence[str]) -> Section:
    rows = []
    for run, label in zip(runs, labels):
        t = run.trials
        best = run.ranked().iloc[0]
        rows.append(
            {
                "run": label,
                "directory": str(run.run_dir),
                "trials": len(t),
                "complete": int((t["status"] == "complete").sum()),
                "pruned": int((t["status"] == "pruned").sum()),
                "error": int((t["status"] == "error").sum()),
                "incomplete": int((t["status"] == "incomplete").sum()),
                "max epoch": run.max_epoch,
                **_best_cells(run.ranking, best),
                "best trial": best["trial_id"],
            }
        )
    sec = Section("Overview")
    sec.text.append(
        "Trials are ranked by their study's metric, as its searcher and ckd-search export rank them: "
        "best test top-1 over epochs (He et al.'s protocol) unless the study optimised another single "
        "metric (its value at the trial's last epoch); a multi-objective study is ranked by best test "
        "top-1 too. A trial counts as complete when it reached its budget (run.epochs, or "
        "run.max_epochs, capped by ASHA's max_t), as the search counts it; otherwise it is listed as "
        "pruned (stopped by ASHA, or still running when analysed) and its value is a low-budget value."
    )
    sec.tables.append(("", pd.DataFrame(rows)))
    return sec


def _run_sections(
    run: SearchRun, label: str, fig_dir: Path, top: int
) -> tuple[list[Section], dict[str, Any], Importances]:
    slug = _slug(label)
    trials = run.trials
    ranked = run.ranked()
    params = candidate_params(trials)
    summary: dict[str, Any] = {"run_dir": str(run.run_dir), "trials": len(trials), "params": params}
    out: list[Section] = []

    head = Section(f"{label}", level=2)
    head.text.extend(run.notes)
    ranking = run.ranking
    metrics = [*dict.fromkeys([ranking.column, METRIC, "final_test_acc"])]
    cols = ["trial_id", "status", *metrics, "epochs_run"] + params
    pruned = trials.drop(ranked.index).sort_values(ranking.column, ascending=ranking.ascending)
    # a parameter shows only where it acted (e_th in phased trials, p_th in adaptive ones)
    ordered = mask_inactive(pd.concat([ranked, pruned]), run.facts.conditions)
    best_tbl = ordered[[c for c in cols if c in ordered]].head(TABLE_ROWS).reset_index(drop=True)
    best_tbl.index = best_tbl.index + 1
    best_tbl.index.name = "rank"
    head.tables.append(
        (
            f"Best configs ({len(best_tbl)} of {len(trials)}; complete trials first, then pruned ones)",
            best_tbl,
        )
    )
    summary["best"] = [_jsonable(r) for r in best_tbl.to_dict("records")[:top]]
    out.append(head)

    # a switch counted in iterations, in epochs: kd.k and kd.e_th then mean one thing in every trial
    in_epochs, units_note = switch_in_epochs(trials, run.descriptors.get("train_samples"))
    imp = compute_importances(in_epochs, params, run.epochs, ranking=ranking, facts=run.facts)
    sec = Section(f"{label}: hyperparameter importance", level=3)
    sec.text.append(
        f"Optuna PED-ANOVA and fANOVA of {ranking.label} on an in-memory study rebuilt from "
        f"{imp.basis()}; distributions inferred from the observed values (kd.k and the "
        "space's log-uniform parameters as log10 of their values); each method normalised to sum to 1."
    )
    sec.text.extend([units_note] if units_note else [])
    sec.text.extend(imp.notes)
    if imp.by_method:
        sec.tables.append(("", imp.table(with_noise=True)))
        sec.figures.append(
            (
                "Importance per parameter",
                plots.importance_bars(
                    imp.table(), fig_dir / f"{slug}_importance.png", f"{label}: importance"
                ),
            )
        )
    for group, sub in imp.by_group.items():
        sec.text.append(f"Within the trials with {group} ({sub.basis()}): " + " ".join(sub.notes))
        if sub.by_method:
            sec.tables.append((f"Importance within {group}", sub.table(with_noise=True)))
    summary["importance"] = imp.by_method
    if imp.by_group:
        summary["importance_by_group"] = {g: sub.by_method for g, sub in imp.by_group.items()}
    out.append(sec)

    plane = _plane_section(in_epochs, label, fig_dir / f"{slug}_plane.png", "phased", ranking)
    plane.text.extend([units_note] if units_note else [])
    out.append(plane)
    kinds = trials["kd.schedule"].astype(str).unique() if "kd.schedule" in trials else []
    if "adaptive" in kinds:
        out.append(_plane_section(trials, label, fig_dir / f"{slug}_plane_adaptive.png", "adaptive", ranking))
        summary["best_adaptive"] = _jsonable(_best_of_kind(trials, "adaptive", ["kd.p_th", "kd.k"], ranking))
    if run.multi_objective:
        sec, front = _pareto_section(run, label, params, fig_dir / f"{slug}_pareto.png")
        out.append(sec)
        summary["pareto"] = front

    top_rows = ranked.head(top)
    configs = [(f"#{i + 1} {r['trial_id']}", r) for i, r in enumerate(top_rows.to_dict("records"))]
    train_samples = run.descriptors.get("train_samples")
    sec = Section(f"{label}: KD switch gamma(e) and P_replace of the top {len(configs)} configs", level=3)
    sec.text.append(
        "Curves from ckd_search.schedules over each config's planned run (run.epochs), "
        "stepped as the engine steps them; P_replace is drawn once per run length."
    )
    sec.figures.append(
        (
            "gamma(e) and P_replace",
            plots.schedule_curves(configs, fig_dir / f"{slug}_switch.png", train_samples, f"{label}: switch"),
        )
    )
    out.append(sec)

    sec = Section(f"{label}: learning curves", level=3)
    ids = [
        (str(r["trial_id"]), f"#{i + 1} {r['trial_id']} ({r[ranking.column]:.4g})")
        for i, r in enumerate(top_rows.to_dict("records"))
    ]
    sec.figures.append(
        (
            "Test top-1 per epoch",
            plots.learning_curves(
                run.epochs, ids, fig_dir / f"{slug}_curves.png", title=f"{label}: learning curves"
            ),
        )
    )
    out.append(sec)

    sec = Section(f"{label}: parallel coordinates", level=3)
    sec.figures.append(
        (
            "Parallel coordinates",
            plots.parallel_coordinates(
                mask_inactive(in_epochs, run.facts.conditions),
                params,
                fig_dir / f"{slug}_parallel.png",
                f"{label}: parallel coordinates",
                ranking,
                run.facts.log_params,
            ),
        )
    )
    out.append(sec)

    if len(kinds) > 1:
        sec = Section(f"{label}: schedule kinds (phased vs adaptive)", level=3)
        table = schedule_table(trials, ranking)
        sec.text.append(
            "phased: gamma = sigma(-k (e - e_th)); adaptive: gamma = sigma(-k (P_replace - "
            f"p_th)); constant: gamma = 1. Best and median {ranking.label} over complete trials "
            "(a kind without any shows its pruned trials, ranked last)."
        )
        sec.tables.append(("", table))
        sec.figures.append(
            (
                f"{ranking.label} per schedule kind",
                plots.schedule_comparison(
                    trials, fig_dir / f"{slug}_kinds.png", f"{label}: schedule kinds", ranking
                ),
            )
        )
        summary["schedule_kinds"] = _jsonable(table.reset_index().to_dict("records"))
        out.append(sec)
    return out, summary, imp


def _plane_section(trials: pd.DataFrame, label: str, path: Path, kind: str, ranking: Ranking) -> Section:
    """The ranking metric over (e_th, log10 k) of the phased trials, or (p_th, log10 k) of the adaptive."""
    key, _ = plots.PLANE_AXES[kind]
    name = key.removeprefix("kd.")
    sec = Section(f"{label}: {ranking.label} over the ({name}, log10 k) plane", level=3)
    if {key, "kd.k"} <= set(trials.columns):
        formula = "sigma(-k (e - e_th))" if kind == "phased" else "sigma(-k (P_replace - p_th))"
        sec.text.append(
            f"{kind.capitalize()}-schedule trials only (gamma = {formula}); colour = {ranking.label}; "
            "hollow = pruned."
        )
        sec.figures.append(
            (
                f"({name}, log10 k) plane",
                plots.switch_plane(trials, path, f"{label}: ({name}, k)", kind, ranking),
            )
        )
    else:
        sec.text.append(f"{key} / kd.k not in the trial configs.")
    return sec


def _best_of_kind(trials: pd.DataFrame, kind: str, keys: Sequence[str], ranking: Ranking) -> dict[str, Any]:
    """The best trial of one schedule kind (complete ones first): id, metrics and ``keys``."""
    best = rank_trials(trials[trials["kd.schedule"].astype(str) == kind], ranking=ranking).iloc[0]
    metrics = dict.fromkeys([ranking.column, METRIC])
    return {"trial_id": best["trial_id"], **{m: best[m] for m in metrics}, **{k: best.get(k) for k in keys}}


def _pareto_section(
    run: SearchRun, label: str, params: Sequence[str], path: Path
) -> tuple[Section, list[dict[str, Any]]]:
    """Objective 1 vs objective 2 of every trial, the Pareto front of the complete ones highlighted."""
    trials = run.trials
    names = [m for m, _ in run.objectives]
    modes = [d for _, d in run.objectives]
    spec = " vs ".join(f"{m} ({d})" for m, d in run.objectives)
    sec = Section(f"{label}: Pareto front ({spec})", level=3)
    cols = [f"final/{m}" for m in names]
    done = (trials["status"] == "complete").to_numpy()
    points = trials[cols].to_numpy().tolist()
    # the front among complete trials, as the searcher and ``ckd-search export`` define it
    mask = pareto_mask([p if ok else [None] * len(cols) for p, ok in zip(points, done)], modes)
    sec.text.append(
        f"Multi-objective search. Each trial at its last epoch (what the searcher was told); "
        f"{sum(mask)} of {int(done.sum())} complete trial(s) are Pareto-optimal (red; no other complete "
        "trial is at least as good in every objective and better in one). Pruned trials are hollow."
    )
    if len(names) > 2:
        sec.text.append(f"The front is over all {len(names)} objectives; the figure shows the first two.")
    front = trials[mask]
    table = front[["trial_id", *cols, *params[:6]]].rename(columns=dict(zip(cols, names)))
    table = table.sort_values(names[0], ascending=modes[0] != "max").reset_index(drop=True)
    sec.tables.append(("Pareto-optimal trials", table))
    sec.figures.append(
        ("Pareto front", plots.pareto_scatter(trials, run.objectives, mask, path, f"{label}: Pareto front"))
    )
    records = [
        {"trial_id": r["trial_id"], **{m: r[f"final/{m}"] for m in names}} for r in front.to_dict("records")
    ]
    return sec, _jsonable(records)


def schedule_table(trials: pd.DataFrame, ranking: Ranking = ACCURACY) -> pd.DataFrame:
    """Per ``kd.schedule`` kind: trial counts, best and median of the ranking metric over complete
    trials. A kind without a complete trial shows its pruned trials' last (low-budget) values,
    marked so in ``over``, and ranks after every kind that has complete trials."""
    rows = []
    for kind, grp in trials.groupby(trials["kd.schedule"].astype(str)):
        done = grp[grp["status"] == "complete"]
        use = done if not done.empty else grp
        best = rank_trials(use, (), ranking).iloc[0]
        rows.append(
            {
                "schedule": kind,
                "trials": len(grp),
                "complete": len(done),
                "over": "complete" if len(done) else "pruned only (low budget)",
                "best": best[ranking.column],
                "median": float(use[ranking.column].median()),
                "best trial": best["trial_id"],
            }
        )
    table = pd.DataFrame(rows).set_index("schedule")
    table["_pruned_only"] = table["complete"] == 0
    table = table.sort_values(["_pruned_only", "best"], ascending=[True, ranking.ascending], kind="stable")
    return table.drop(columns="_pruned_only")


def _datasets_section(runs: Sequence[SearchRun], labels: Sequence[str]) -> Section:
    """Descriptors of each data set next to its best switch (e_th, k) and its spread over the top trials."""
    rows = []
    for run, label in zip(runs, labels):
        ranked = run.ranked()
        best = ranked.iloc[0]
        row: dict[str, Any] = {"run": label}
        for key in DESCRIPTOR_KEYS:
            if key in run.descriptors:
                row[key] = run.descriptors[key]
        kind = switch_kind(best)
        converted, _ = switch_in_epochs(ranked.head(SPREAD_TOP), run.descriptors.get("train_samples"))
        phased = converted[converted.apply(switch_kind, axis=1) == "phased"] if len(converted) else converted
        # the best trial's switch in epochs (absent when its iterations per epoch are unknown)
        point = phased.loc[best.name] if best.name in phased.index else None
        e_th = None if point is None else point.get("kd.e_th")
        row.update(
            {
                "best schedule": kind if kind != "off" else "KD disabled",
                "best e_th (epochs)": e_th,
                "e_th / E": _ratio(e_th, best.get("run.epochs")),
                "best k (per epoch)": None if point is None else point.get("kd.k"),
                "best p_th": best.get("kd.p_th") if kind == "adaptive" else None,
                "best adaptive k": best.get("kd.k") if kind == "adaptive" else None,
                **_top_spread(phased),
                "best beta": best.get("loss.beta"),
                **_best_cells(run.ranking, best),
                "best trial": f"{best['trial_id']}{pruned_flag(best)}",
            }
        )
        rows.append(row)
    sec = Section("Data sets: descriptors and best switch")
    sec.text.append(
        "Descriptors from RUN_DIR/descriptors.json (ckd_search.analysis.descriptors): "
        "cka_rgb_dvs is the linear CKA between the static (V channel) and DVS membrane "
        "features of a freshly initialised student, rgb_dvs_gap = 1 - cka_rgb_dvs. "
        "e_th / E places the best switch point relative to the run length; a switch counted in "
        "iterations is shown in epochs (e_th / n, k x n for n iterations per epoch). e_th and k are "
        "given only where they acted (a phased best); an adaptive best has p_th and its own k."
    )
    sec.text.append(
        "Read the best switch with care: the best test top-1 over epochs picks both the epoch and the "
        "config on the test set, so the winner's value is optimistic, and every config ran with one "
        f"seed. The top-{SPREAD_TOP} columns give the min-max of e_th / E and log10 k over the phased "
        f"trials among the {SPREAD_TOP} best (n=K where only K of them are phased): a wide range means "
        "the data set does not pin the switch down. Retrain the best configs with new seeds "
        "(ckd-search reproduce) before comparing data sets."
    )
    computed = [label for run, label in zip(runs, labels) if run.descriptors.get("computed_by")]
    if computed:
        sec.text.append(
            "Computed by analyze (the run directory had no descriptors.json) for: "
            + ", ".join(computed)
            + "."
        )
    missing = [label for run, label in zip(runs, labels) if not run.descriptors]
    if missing:
        sec.text.append("No descriptors for: " + ", ".join(missing) + " (see the run's notes).")
    sec.tables.append(("", pd.DataFrame(rows)))
    return sec


def _best_cells(ranking: Ranking, best: pd.Series) -> dict[str, Any]:
    """The best trial's ranking metric and, when that is another metric, its best test top-1 too;
    flagged "(pruned, N/E epochs)" when the best trial did not reach its budget."""
    flag = pruned_flag(best)

    def cell(value: Any) -> Any:
        return f"{_fmt(value)}{flag}" if flag else value

    if ranking.column == METRIC:
        return {"best test top-1": cell(best[METRIC])}
    return {f"best {ranking.label}": cell(best[ranking.column]), "its best test top-1": cell(best[METRIC])}


def _top_spread(phased: pd.DataFrame) -> dict[str, str | None]:
    """min-max of e_th / E and log10 k over the phased trials among the best ``SPREAD_TOP``."""
    if len(phased) == 0 or not {"kd.e_th", "kd.k", "run.epochs"} <= set(phased.columns):
        return {f"top-{SPREAD_TOP} e_th / E": None, f"top-{SPREAD_TOP} log10 k": None}
    ratio = phased["kd.e_th"].astype(float) / phased["run.epochs"].astype(float)
    return {
        f"top-{SPREAD_TOP} e_th / E": _spread(ratio),
        f"top-{SPREAD_TOP} log10 k": _spread(phased["kd.k"].astype(float).map(_log10)),
    }


def _spread(values: pd.Series) -> str | None:
    """'min-max' of the finite values (None without any), with their count when fewer than
    ``SPREAD_TOP``: one trial has no spread, and "0.5-0.5" would read as a pinned-down switch."""
    finite = pd.to_numeric(values, errors="coerce").dropna()
    if not len(finite):
        return None
    of = f" (n={len(finite)})" if len(finite) < SPREAD_TOP else ""
    return f"{finite.min():.3g}-{finite.max():.3g}{of}"


def _log10(value: float) -> float:
    return math.log10(value) if value > 0 else math.nan


def _ratio(a: Any, b: Any) -> float | None:
    try:
        return float(a) / float(b)
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def _fmt_rho(rho: Any) -> str:
    return "undefined" if rho is None else f"{float(rho):+.3f}"


def _fidelity_section(fid: Mapping[str, Any], path: Path) -> Section:
    sec = Section("Fidelity: truncate vs compress")
    s = fid.get("settings", {})
    sec.text.append(
        f"{len(fid.get('rows', []))} configs trained at full budget ({s.get('full_epochs')} epochs) and at "
        f"low budget ({s.get('low_epochs')} epochs). truncate: schedules span run.epochs and the trial "
        "stops early; compress: schedules are laid over the low budget. Spearman rank correlation of "
        f"{s.get('metric', METRIC)} between low and full budget (higher = the low budget ranks configs "
        "as the full budget would)."
    )
    seeds = s.get("train_seeds") or []
    ceiling = fid.get("seed_ceiling") or {}
    if len(seeds) > 1:
        sec.text.append(
            f"Each value is the mean over training seeds {', '.join(map(str, seeds))}. Seed ceiling (the "
            "mean Spearman rho between the full-budget results of two single seeds): "
            f"{_fmt_rho(ceiling.get('rho'))}. It is a single-seed-vs-single-seed reference, not a bound: "
            "the low/full rho compares means over seeds, between runs that share those seeds (in "
            "truncate, the low-budget run is the start of the same full run), so it can exceed it."
        )
    rows = [
        {
            "mode": m,
            "spearman rho": v.get("rho"),
            "p-value": v.get("p"),
            "regret of low-budget pick": fid.get("regret", {}).get(m),
        }
        for m, v in fid.get("spearman", {}).items()
    ]
    sec.tables.append(("", pd.DataFrame(rows)))
    detail = pd.DataFrame(
        [
            {
                **r.get("params", {}),
                "full": r.get("full"),
                "truncate": r.get("truncate"),
                "compress": r.get("compress"),
            }
            for r in fid.get("rows", [])
        ]
    )
    if not detail.empty:
        sec.tables.append(("Per config", detail))
    sec.figures.append(("Low vs full budget", plots.fidelity_scatter(fid, path)))
    return sec


# --- rendering ---------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4g}"
    if value is None:
        return "-"
    return str(value)


def _table_cells(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    show_index = df.index.name is not None or not isinstance(df.index, pd.RangeIndex)
    header = ([df.index.name or ""] if show_index else []) + [str(c) for c in df.columns]
    rows = []
    for idx, rec in zip(df.index, df.itertuples(index=False)):
        cells = [_fmt(v) for v in rec]
        rows.append(([_fmt(idx)] if show_index else []) + cells)
    return header, rows


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (floats to 4 significant digits)."""
    header, rows = _table_cells(df)
    esc = [[c.replace("|", "\\|") for c in r] for r in [header, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(lines)


def _html_table(df: pd.DataFrame) -> str:
    header, rows = _table_cells(df)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee}figure{margin:1em 0}figcaption{color:#666;font-size:.85em}
h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}"""


def render_html(title: str, sections: Sequence[Section]) -> str:
    """One self-contained HTML page: tables inline, PNG figures as base64 data URIs."""
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
    ]
    parts.append(
        "<ul>"
        + "".join(f"<li><a href='#s{i}'>{html.escape(s.title)}</a></li>" for i, s in enumerate(sections))
        + "</ul>"
    )
    for i, s in enumerate(sections):
        parts.append(f"<h{s.level} id='s{i}'>{html.escape(s.title)}</h{s.level}>")
        parts.extend(f"<p>{html.escape(t)}</p>" for t in s.text)
        for caption, df in s.tables:
            if caption:
                parts.append(f"<p><b>{html.escape(caption)}</b></p>")
            parts.append(_html_table(df))
        for caption, path in s.figures:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(
                f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(title: str, sections: Sequence[Section], root: Path) -> str:
    """Markdown with the same content; figures linked relative to ``root``."""
    lines = [f"# {title}", ""]
    for s in sections:
        lines += ["#" * s.level + " " + s.title, ""]
        for t in s.text:
            lines += [t, ""]
        for caption, df in s.tables:
            if caption:
                lines += [f"**{caption}**", ""]
            lines += [markdown_table(df), ""]
        for caption, path in s.figures:
            rel = path.relative_to(root) if path.is_relative_to(root) else path
            lines += [f"![{caption}]({rel.as_posix()})", ""]
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
