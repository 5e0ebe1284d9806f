"""Report figures as PNG files (matplotlib, Agg canvas; no pyplot global state).

Each function draws one figure from plain tables and returns the path it wrote.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ckd_search.analysis.results import ACCURACY
from ckd_search.analysis.results import Ranking
from ckd_search.analysis.results import iters_per_epoch
from ckd_search.analysis.space_facts import LOG_PARAMS
from ckd_search.config import Config
from ckd_search.config import leaf_keys
from ckd_search.errors import UserError
from ckd_search.schedules import Schedules
from ckd_search.storage import atomic_write

log = logging.getLogger(__name__)

DPI = 110


def _figure(width: float = 6.4, height: float = 4.2) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    # through a temp file: a report read (or a run killed) mid-draw never holds a torn PNG
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png"))


# --- importance --------------------------------------------------------------------------------
def importance_bars(table: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Horizontal bars: one group per parameter, one bar per method (each method sums to 1)."""
    fig = _figure(6.4, 0.5 + 0.45 * max(2, len(table)) * max(1, len(table.columns)) / 1.5)
    ax = fig.add_subplot()
    params = list(table.index)[::-1]
    methods = list(table.columns)
    height = 0.8 / max(1, len(methods))
    y = np.arange(len(params))
    for i, method in enumerate(methods):
        vals = table[method].reindex(params).fillna(0.0).to_numpy()
        ax.barh(y + (i - (len(methods) - 1) / 2) * height, vals, height=height, label=method)
    ax.set_yticks(y, params)
    ax.set_xlabel("importance (normalised, sums to 1)")
    ax.set_xlim(0, 1)
    ax.legend(loc="lower right")
    ax.set_title(title or "Hyperparameter importance")
    return _save(fig, path)


# --- the (e_th, k) and (p_th, k) planes --------------------------------------------------------
#: Switch-point key and axis label of each schedule kind's plane.
PLANE_AXES = {
    "phased": ("kd.e_th", "e_th (switch epoch)"),
    "adaptive": ("kd.p_th", "p_th (switch at P_replace = p_th)"),
}


def switch_plane(
    trials: pd.DataFrame, path: Path, title: str = "", kind: str = "phased", ranking: Ranking = ACCURACY
) -> Path:
    """The ranking metric over (switch point, log10 k) of the ``kind`` trials: (e_th, k) for phased,
    (p_th, k) for adaptive; complete trials filled, pruned ones hollow; best starred."""
    key, xlabel = PLANE_AXES[kind]
    fig = _figure()
    ax = fig.add_subplot()
    df = trials.dropna(subset=[key, "kd.k", ranking.column])
    df = df[df["kd.k"] > 0]
    if "kd.schedule" in df:
        df = df[df["kd.schedule"] == kind]
    if df.empty:
        ax.text(0.5, 0.5, f"no {kind} trials with {key} and k", ha="center", va="center")
        return _save(fig, path)
    x = df[key].astype(float).to_numpy()
    y = np.log10(df["kd.k"].astype(float).to_numpy())
    acc = df[ranking.column].astype(float).to_numpy()
    vmin, vmax = float(np.nanmin(acc)), float(np.nanmax(acc))
    if vmin == vmax:
        vmin, vmax = vmin - 1e-3, vmax + 1e-3
    done = (df["status"] == "complete").to_numpy()
    sc = ax.scatter(
        x[done],
        y[done],
        c=acc[done],
        cmap=ranking.cmap,
        vmin=vmin,
        vmax=vmax,
        s=55,
        edgecolors="k",
        linewidths=0.4,
        label="complete",
    )
    if (~done).any():
        cmap = sc.get_cmap()
        colors = cmap((acc[~done] - vmin) / (vmax - vmin))
        ax.scatter(
            x[~done],
            y[~done],
            facecolors="none",
            edgecolors=colors,
            s=45,
            linewidths=1.2,
            label="pruned (low-budget value)",
        )
    best = ranking.best_index(np.where(done, acc, np.nan)) if done.any() else ranking.best_index(acc)
    ax.scatter(
        [x[best]],
        [y[best]],
        marker="*",
        s=380,
        facecolors="none",
        edgecolors="red",
        linewidths=1.6,
        zorder=5,
        label=f"best {acc[best]:.3f}",
    )
    fig.colorbar(sc, ax=ax, label=ranking.label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("log10 k (switch steepness)")
    ax.legend(loc="best", fontsize="small")
    ax.set_title(title or f"Accuracy over the ({key.removeprefix('kd.')}, k) plane")
    return _save(fig, path)


# --- gamma and P_replace -----------------------------------------------------------------------
def switch_curves(
    flat: Mapping[str, Any], iters_per_epoch: int | None = None, resolution: int = 50
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(epoch grid, gamma, P_replace) of one config over its planned run, from the engine's own
    :class:`~ckd_search.schedules.Schedules` (keys the trial did not set take their defaults).

    ``resolution`` batches per epoch are sampled (P_replace depends only on progress). With
    ``kd.units='iteration'`` the real iterations per epoch are needed; None then skips the curve,
    as it does for a config that does not validate.
    """
    known = {k: v for k, v in flat.items() if k in _CONFIG_KEYS and not _missing(v)}
    try:  # the planned run: laid over run.epochs, whatever budget the trial had
        cfg = Config.from_dict({**known, "run.max_epochs": None, "run.fidelity": "truncate"})
    except UserError:
        return None
    if cfg.kd.units == "iteration" and not iters_per_epoch:
        return None
    ipe = int(iters_per_epoch) if cfg.kd.units == "iteration" and iters_per_epoch else resolution
    sched = Schedules(cfg, ipe)
    xs, gs, ps = [], [], []
    for epoch in range(cfg.run.epochs):
        for it in range(ipe):
            p = sched.p_replace(it, epoch)
            xs.append(epoch + it / ipe)
            gs.append(sched.gamma(it, epoch, p) if cfg.distils else 0.0)
            ps.append(p)
    return np.asarray(xs), np.asarray(gs), np.asarray(ps)


_CONFIG_KEYS = leaf_keys()


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _switch_label(flat: Mapping[str, Any]) -> str:
    kind = flat.get("kd.schedule", "phased")
    if not flat.get("kd.enabled", True):
        return "no KD"
    if kind == "constant":
        return "gamma = 1"
    if kind == "adaptive":
        return f"adaptive p_th={_num(flat.get('kd.p_th'))} k={_num(flat.get('kd.k'))}"
    return f"phased e_th={_num(flat.get('kd.e_th'))} k={_num(flat.get('kd.k'))}"


def _num(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) else str(value)


def schedule_curves(
    configs: Sequence[tuple[str, Mapping[str, Any]]],
    path: Path,
    train_samples: int | None = None,
    title: str = "",
) -> Path:
    """gamma(e) (solid) and P_replace (dashed) of several configs on one plot, one colour each; a
    switch counted in iterations steps ``train_samples`` // each config's own batch size per epoch."""
    fig = _figure(7.0, 4.2)
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(configs))]
    drawn_p: set[tuple[Any, ...]] = set()
    for (label, flat), color in zip(configs, colors):
        curves = switch_curves(flat, iters_per_epoch(train_samples, flat.get("optim.batch_size")))
        if curves is None:
            continue
        x, g, p = curves
        ax.plot(x, g, color=color, lw=1.8, label=f"{label}: {_switch_label(flat)}")
        key = (flat.get("run.epochs"), flat.get("loss.replace"), flat.get("loss.replace_power"))
        if key not in drawn_p:  # P_replace is the same for every config of one run length
            drawn_p.add(key)
            ax.plot(x, p, color="k", lw=1.2, ls="--", label=f"P_replace ({key[1] or 'sliding'}, E={key[0]})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("weight / probability")
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title(title or "KD switch gamma(e) and P_replace of the top configs")
    return _save(fig, path)


# --- learning curves ---------------------------------------------------------------------------
def learning_curves(
    epochs: pd.DataFrame,
    top: Sequence[tuple[str, str]],
    path: Path,
    metric: str = "test_acc",
    title: str = "",
) -> Path:
    """``metric`` per epoch: every trial in light grey, the ``top`` (trial_id, label) in colour."""
    fig = _figure()
    ax = fig.add_subplot()
    if epochs.empty or metric not in epochs:
        ax.text(0.5, 0.5, f"no per-epoch {metric}", ha="center", va="center")
        return _save(fig, path)
    df = epochs.dropna(subset=[metric])
    for _, grp in df.groupby("trial_id"):
        ax.plot(grp["epoch"], grp[metric], color="0.75", lw=0.8, marker=".", ms=4, zorder=1)
    for i, (trial_id, label) in enumerate(top):
        grp = df[df["trial_id"] == trial_id]
        ax.plot(grp["epoch"], grp[metric], color=f"C{i % 10}", lw=2, marker="o", ms=3, label=label, zorder=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric.replace("_", " "))
    if top:
        ax.legend(fontsize="small")
    ax.set_title(title or "Learning curves (top trials in colour)")
    return _save(fig, path)


# --- parallel coordinates ----------------------------------------------------------------------
def parallel_coordinates(
    trials: pd.DataFrame,
    params: Sequence[str],
    path: Path,
    title: str = "",
    ranking: Ranking = ACCURACY,
    log_params: frozenset[str] = LOG_PARAMS,
) -> Path:
    """One line per trial through its (scaled) parameter values and its ranking metric, coloured by it.

    Numeric axes are min-max scaled (``kd.k`` and the other ``log_params`` in log10); categorical axes
    spread their levels evenly. The end labels show each axis' range.
    """
    fig = _figure(max(6.4, 1.5 * (len(params) + 1)), 4.4)
    ax = fig.add_subplot()
    df = trials.dropna(subset=[ranking.column])
    axes = list(params) + [ranking.column]
    if df.empty or not params:
        ax.text(0.5, 0.5, "no varying parameters", ha="center", va="center")
        return _save(fig, path)
    scaled = np.zeros((len(df), len(axes)))
    lows, highs = [], []
    for j, name in enumerate(axes):
        col = df[name]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            vals = col.astype(float).to_numpy()
            use_log = name in log_params and np.nanmin(vals) > 0
            v = np.log10(vals) if use_log else vals
            lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
            scaled[:, j] = (v - lo) / (hi - lo) if hi > lo else 0.5
            fmt = (lambda z: f"1e{z:.1f}") if use_log else (lambda z: f"{z:.3g}")
            lows.append(fmt(lo))
            highs.append(fmt(hi))
        else:
            levels = sorted(col.astype(str).unique())
            pos = {lv: (i / (len(levels) - 1) if len(levels) > 1 else 0.5) for i, lv in enumerate(levels)}
            scaled[:, j] = col.astype(str).map(pos).to_numpy()
            lows.append(levels[0])
            highs.append(levels[-1])
            for lv, yv in pos.items():
                ax.text(j + 0.04, yv, lv, fontsize="x-small", va="center", color="0.3")
    acc = df[ranking.column].astype(float).to_numpy()
    norm_acc = (
        (acc - acc.min()) / (acc.max() - acc.min()) if acc.max() > acc.min() else np.full_like(acc, 0.5)
    )
    cmap = fig.colorbar(_mappable(acc, ranking.cmap), ax=ax, label=ranking.label).cmap
    order = np.argsort(-acc if ranking.ascending else acc)  # best drawn last, on top
    done = (df["status"] == "complete").to_numpy()
    for i in order:
        ax.plot(
            range(len(axes)),
            scaled[i],
            color=cmap(norm_acc[i]),
            lw=1.8 if done[i] else 0.9,
            alpha=0.9 if done[i] else 0.45,
            ls="-" if done[i] else ":",
        )
    for j in range(len(axes)):
        ax.axvline(j, color="0.5", lw=0.8)
        ax.text(j, -0.07, lows[j], ha="center", va="top", fontsize="x-small")
        ax.text(j, 1.07, highs[j], ha="center", va="bottom", fontsize="x-small")
    ax.set_xticks(range(len(axes)), axes, rotation=20, fontsize="small")
    ax.set_yticks([])
    ax.set_ylim(-0.15, 1.15)
    ax.set_title(title or "Parallel coordinates (dotted: pruned)")
    return _save(fig, path)


def _mappable(values: np.ndarray, cmap: str) -> Any:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    lo, hi = float(values.min()), float(values.max())
    return ScalarMappable(norm=Normalize(lo, hi if hi > lo else lo + 1e-3), cmap=cmap)


# --- schedule kinds ----------------------------------------------------------------------------
def schedule_comparison(
    trials: pd.DataFrame, path: Path, title: str = "", ranking: Ranking = ACCURACY
) -> Path:
    """The ranking metric of every trial per ``kd.schedule`` kind (complete filled, pruned hollow)."""
    fig = _figure(5.6, 4.0)
    ax = fig.add_subplot()
    kinds = sorted(trials["kd.schedule"].astype(str).unique())
    rng = np.random.default_rng(0)
    for i, kind in enumerate(kinds):
        grp = trials[trials["kd.schedule"] == kind].dropna(subset=[ranking.column])
        jitter = rng.uniform(-0.12, 0.12, len(grp))
        done = (grp["status"] == "complete").to_numpy()
        vals = grp[ranking.column].astype(float).to_numpy()
        ax.scatter(i + jitter[done], vals[done], color=f"C{i}", s=30, label=None)
        ax.scatter(i + jitter[~done], vals[~done], facecolors="none", edgecolors=f"C{i}", s=30)
        if done.any():
            ax.hlines(vals[done][ranking.best_index(vals[done])], i - 0.3, i + 0.3, color=f"C{i}", lw=2)
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_ylabel(ranking.label)
    ax.set_title(title or "Schedule kinds (bar: best complete trial)")
    return _save(fig, path)


# --- Pareto front ------------------------------------------------------------------------------
def pareto_scatter(
    trials: pd.DataFrame,
    objectives: Sequence[tuple[str, str]],
    on_front: Sequence[bool],
    path: Path,
    title: str = "",
) -> Path:
    """First vs second objective of every trial (complete filled, pruned hollow), the Pareto front
    in red and joined as a staircase; axis labels say which direction is better."""
    (m1, d1), (m2, d2) = objectives[:2]
    c1, c2 = f"final/{m1}", f"final/{m2}"
    fig = _figure()
    ax = fig.add_subplot()
    front = np.asarray(on_front, dtype=bool)
    x = trials[c1].astype(float).to_numpy()
    y = trials[c2].astype(float).to_numpy()
    done = (trials["status"] == "complete").to_numpy()
    rest = ~front
    ax.scatter(x[rest & done], y[rest & done], color="0.55", s=30, label="complete")
    if (rest & ~done).any():
        pruned = rest & ~done
        ax.scatter(x[pruned], y[pruned], facecolors="none", edgecolors="0.55", s=30, label="pruned")
    if front.any():
        order = np.argsort(x[front])
        fx, fy = x[front][order], y[front][order]
        # the edge of the dominated region: a front point covers the x values it is better than
        ax.step(fx, fy, where="pre" if d1 == "max" else "post", color="red", lw=1, alpha=0.6)
        ax.scatter(fx, fy, color="red", edgecolors="k", linewidths=0.5, s=60, zorder=3, label="Pareto front")
    ax.set_xlabel(f"{m1} ({'higher' if d1 == 'max' else 'lower'} is better)")
    ax.set_ylabel(f"{m2} ({'higher' if d2 == 'max' else 'lower'} is better)")
    ax.legend(loc="best", fontsize="small")
    ax.set_title(title or f"Pareto front: {m1} vs {m2}")
    return _save(fig, path)


# --- fidelity ----------------------------------------------------------------------------------
def fidelity_scatter(fidelity: Mapping[str, Any], path: Path) -> Path:
    """Low-budget vs full-budget accuracy for each fidelity mode, with Spearman's rho."""
    modes = [m for m in ("truncate", "compress") if m in fidelity.get("spearman", {})]
    fig = _figure(4.0 * max(1, len(modes)), 4.0)
    rows = fidelity.get("rows", [])
    full = np.array([r.get("full", np.nan) for r in rows], dtype=float)
    for i, mode in enumerate(modes):
        ax = fig.add_subplot(1, len(modes), i + 1)
        low = np.array([r.get(mode, np.nan) for r in rows], dtype=float)
        ax.scatter(low, full, s=40, color=f"C{i}", edgecolors="k", linewidths=0.4)
        for j, (lx, fy) in enumerate(zip(low, full)):
            ax.annotate(str(j), (lx, fy), fontsize="x-small", xytext=(3, 3), textcoords="offset points")
        rho = fidelity["spearman"][mode].get("rho")
        rho_txt = "nan" if rho is None or not math.isfinite(rho) else f"{rho:.2f}"
        ax.set_title(f"{mode}: Spearman rho = {rho_txt}")
        ax.set_xlabel(f"low budget ({fidelity.get('settings', {}).get('low_epochs', '?')} ep)")
        ax.set_ylabel(f"full budget ({fidelity.get('settings', {}).get('full_epochs', '?')} ep)")
    return _save(fig, path)
