"""How well a low-budget trial ranks configs, in the two fidelity modes of the engine.

- ``truncate``: the schedules (LR, P_replace, gamma) span ``run.epochs``; the trial stops after
  ``run.max_epochs``: a low-budget trial sees only the start of the planned run (KD on, P small).
- ``compress``: ``run.fidelity=compress``: the schedules are laid over the budget, so a low-budget
  trial runs the whole schedule (switch included) in fewer epochs; k is steepened by
  epochs/budget so gamma keeps its shape over the fraction of the run. LR warm-up stays in
  epochs: it protects the first optimizer steps, whatever the run's length.

``fidelity_study`` samples N configs of (kd.e_th, kd.k log-uniform, loss.beta) with a fixed seed,
trains each at full budget and at low budget in both modes (one prepared data set for all), and
reports the Spearman rank correlation between low- and full-budget results per mode.

With several training seeds each value is the mean over seeds, and the study also reports the
*seed ceiling*: the mean Spearman rho between the full-budget results of two different seeds. It is a
single-seed-vs-single-seed reference for training noise, not a bound: the low/full rho compares
means over seeds, between runs that share those seeds (in ``truncate`` the low-budget run is the
start of the same-seed full run), so it can exceed the ceiling.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import platform
import random
import time
import warnings
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy.stats import spearmanr

from ckd_search.config import Config
from ckd_search.storage import atomic_write_text

log = logging.getLogger(__name__)

MODES = ("truncate", "compress")
METRIC = "best_test_acc"


@dataclass(frozen=True)
class SwitchSpace:
    """Ranges the configs are drawn from; e_th as a fraction of the full run (run.epochs)."""

    e_th_frac: tuple[float, float] = (0.1, 0.9)
    k: tuple[float, float] = (0.01, 100.0)  # log-uniform
    beta: tuple[float, float] = (0.0, 1.0)

    def draw(self, rng: random.Random, epochs: int) -> dict[str, float]:
        lo, hi = self.e_th_frac
        return {
            "kd.e_th": round(rng.uniform(lo, hi) * epochs, 3),
            "kd.k": round(10 ** rng.uniform(math.log10(self.k[0]), math.log10(self.k[1])), 5),
            "loss.beta": round(rng.uniform(*self.beta), 3),
        }


def sample_configs(
    n: int, epochs: int, seed: int = 0, space: SwitchSpace | None = None
) -> list[dict[str, float]]:
    """``n`` seeded draws of (kd.e_th, kd.k, loss.beta) for a run of ``epochs`` epochs."""
    rng = random.Random(seed)
    space = space or SwitchSpace()
    return [space.draw(rng, epochs) for _ in range(n)]


def budget_config(
    base: Config, params: Mapping[str, Any], full_epochs: int, low_epochs: int | None, mode: str = "truncate"
) -> Config:
    """The config of one training: ``params`` over ``base``; ``low_epochs`` None = full budget."""
    values: dict[str, Any] = {
        **params,
        "run.epochs": full_epochs,
        "run.max_epochs": low_epochs,
        "run.fidelity": mode if low_epochs is not None else "truncate",
    }
    return base.replace(**values)


def spearman(low: list[float], full: list[float]) -> dict[str, float | None]:
    """Spearman's rho and its p-value (None where undefined, e.g. constant input)."""
    if len(low) < 3:
        return {"rho": None, "p": None}
    with warnings.catch_warnings():  # constant input: rho is undefined (nan), said by None
        warnings.simplefilter("ignore")
        res = spearmanr(low, full)
    rho, p = float(res.statistic), float(res.pvalue)
    return {"rho": rho if math.isfinite(rho) else None, "p": p if math.isfinite(p) else None}


def fidelity_study(
    base: Config,
    *,
    n_configs: int = 8,
    full_epochs: int = 8,
    low_epochs: int = 2,
    seed: int = 0,
    train_seeds: Sequence[int] | None = None,
    space: SwitchSpace | None = None,
    metric: str = METRIC,
    prepared: Any | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Rank correlation between low- and full-budget results for ``truncate`` and ``compress``.

    Args:
        base: config of every training (data, model, seed); kd.e_th, kd.k, loss.beta and run.*
            budgets are set per training.
        n_configs: configs drawn (>= 3 for a correlation).
        full_epochs: the full budget E (run.epochs).
        low_epochs: the low budget (run.max_epochs), < E.
        seed: seed of the config draws.
        train_seeds: training seeds (``run.seed``); each value is the mean over them. None =
            ``base.run.seed`` only.
        space: ranges of the draws.
        metric: the engine result compared (``best_test_acc`` or ``final_test_acc``).
        prepared: a ``Prepared`` matching ``base`` (others are prepared here as needed).
        progress: called with one line per finished training.

    Returns:
        JSON-ready dict: ``settings``, ``rows`` (params; full, truncate, compress as seed means;
        the per-seed values under ``<mode>_seeds``; seconds), ``spearman`` {mode: {rho, p}},
        ``regret`` {mode: full-budget accuracy lost by picking the low-budget winner},
        ``seed_ceiling`` {rho, pairs} (None with one seed), ``elapsed_s`` and ``machine``.
    """
    from ckd_search.engine import fit
    from ckd_search.prepare import prepare
    from ckd_search.prepare import prepare_key

    if not 1 <= low_epochs < full_epochs:
        raise ValueError(f"low_epochs={low_epochs} must be in [1, full_epochs={full_epochs})")
    if n_configs < 1:
        raise ValueError(f"n_configs={n_configs} must be >= 1")
    start = time.perf_counter()
    configs = sample_configs(n_configs, full_epochs, seed, space)
    seeds = list(train_seeds) if train_seeds else [base.run.seed]
    # the teacher is fine-tuned with run.seed, so each training seed has its own prepared data
    ready: dict[str, Any] = {} if prepared is None else {prepared.key: prepared}

    def prepared_for(cfg: Config) -> Any:
        key = prepare_key(cfg)
        if key not in ready:
            ready[key] = prepare(cfg)
        return ready[key]

    rows: list[dict[str, Any]] = []
    for i, params in enumerate(configs):
        row: dict[str, Any] = {"params": params}
        for mode, low in (("full", None), *((m, low_epochs) for m in MODES)):
            values, seconds = [], 0.0
            for train_seed in seeds:
                cfg = budget_config(base.replace(**{"run.seed": train_seed}), params, full_epochs, low, mode)
                t0 = time.perf_counter()
                result = fit(cfg, prepared=prepared_for(cfg))
                seconds += time.perf_counter() - t0
                values.append(float(getattr(result, metric)))
                if progress is not None:
                    progress(
                        f"config {i + 1}/{n_configs} {mode:8s} seed {train_seed} {result.epochs_run:3d} ep: "
                        f"{metric} {values[-1]:.4f}"
                    )
            row[mode] = sum(values) / len(values)
            row[f"{mode}_seeds"] = values
            row[f"{mode}_s"] = seconds
        rows.append(row)
    full = [r["full"] for r in rows]
    out: dict[str, Any] = {
        "settings": {
            "n_configs": n_configs,
            "full_epochs": full_epochs,
            "low_epochs": low_epochs,
            "seed": seed,
            "train_seeds": seeds,
            "metric": metric,
            "space": (space or SwitchSpace()).__dict__,
            "dataset": base.data.dataset,
            "base": {
                k: v for k, v in base.flat().items() if k.split(".")[0] in ("data", "model", "optim", "run")
            },
        },
        "rows": rows,
        "spearman": {m: spearman([r[m] for r in rows], full) for m in MODES},
        "regret": {m: _regret([r[m] for r in rows], full) for m in MODES},
        "seed_ceiling": seed_ceiling([r["full_seeds"] for r in rows]),
        "elapsed_s": time.perf_counter() - start,
        "machine": machine(),
    }
    return out


def seed_ceiling(per_config: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Mean Spearman rho between the full-budget results of every pair of training seeds.

    ``per_config[i][j]`` is config i's result with seed j. None with fewer than two seeds or three
    configs, or where every pair is undefined (constant results).
    """
    n_seeds = min((len(v) for v in per_config), default=0)
    rhos = []
    for a, b in itertools.combinations(range(n_seeds), 2):
        rho = spearman([v[a] for v in per_config], [v[b] for v in per_config])["rho"]
        if rho is not None:
            rhos.append(rho)
    return {"rho": sum(rhos) / len(rhos) if rhos else None, "pairs": len(rhos)}


def _regret(low: list[float], full: list[float]) -> float | None:
    """Full-budget value of the best config minus that of the low-budget winner."""
    if not low:
        return None
    pick = max(range(len(low)), key=lambda i: low[i])
    return max(full) - full[pick]


def machine() -> dict[str, Any]:
    """Where the numbers came from."""
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_fidelity(path: str | Path, result: Mapping[str, Any]) -> Path:
    """Write a study result as JSON (``fidelity.json``; ``analyze`` picks it up)."""
    return atomic_write_text(Path(path), json.dumps(result, indent=1, default=str))


def format_table(result: Mapping[str, Any]) -> str:
    """A plain-text table of the rows and the two correlations."""
    lines = [f"{'#':>2}  {'e_th':>6} {'k':>9} {'beta':>5}  {'full':>6} {'trunc':>6} {'compr':>6}"]
    for i, r in enumerate(result["rows"]):
        p = r["params"]
        lines.append(
            f"{i:>2}  {p['kd.e_th']:6.2f} {p['kd.k']:9.4g} {p['loss.beta']:5.2f}  "
            f"{r['full']:6.3f} {r['truncate']:6.3f} {r['compress']:6.3f}"
        )
    ceiling = result.get("seed_ceiling") or {}
    if ceiling.get("rho") is not None:
        lines.append(
            f"Seed ceiling (full vs full, other seed): rho {ceiling['rho']:+.3f} "
            f"over {ceiling['pairs']} seed pairs"
        )
    for mode in MODES:
        s = result["spearman"][mode]
        rho = "nan" if s["rho"] is None else f"{s['rho']:+.3f}"
        pv = "nan" if s["p"] is None else f"{s['p']:.3f}"
        lines.append(
            f"Spearman {mode:8s}: rho {rho} (p {pv}), regret of low-budget pick {result['regret'][mode]:.4f}"
        )
    return "\n".join(lines)
