"""Hyperparameter importance with Optuna's PED-ANOVA and fANOVA on a study rebuilt from a trial table.

The search's own Optuna storage is not needed: every finished trial becomes a ``FrozenTrial``
(``optuna.trial.create_trial``) in an in-memory study, with distributions inferred from the values
seen. Parameters drawn on a log scale (``kd.k``, and those the space file draws log-uniformly) enter
as log10 of their values: fANOVA ignores a distribution's ``log`` flag, and would otherwise give
k in [1e-3, 1] about 1 % of a [1e-3, 1e2] axis. Complete trials carry their ranking metric; pruned
trials are added as PRUNED (the evaluators skip them) so low-budget values do not pose as final results.

Conditional parameters (``kd.e_th`` acts only in the phased schedule, ``kd.p_th`` only in the adaptive
one, and whatever the space file's ``condition`` entries say) are masked where inactive: the resolved
configs carry their defaults there, which would otherwise count as real draws. When a switching key
varies, the overall ranking covers the shared parameters (the switch itself included) and each of its
values gets its own ranking with the parameters that act there.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import BaseDistribution
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

from ckd_search.analysis.results import ACCURACY
from ckd_search.analysis.results import Ranking
from ckd_search.analysis.space_facts import ENGINE_CONDITIONS
from ckd_search.analysis.space_facts import LOG_PARAMS
from ckd_search.analysis.space_facts import Condition
from ckd_search.analysis.space_facts import SpaceFacts

log = logging.getLogger(__name__)

# The parameters the switching question is about, in report order.
CORE_PARAMS = ("kd.e_th", "kd.k", "loss.beta", "kd.temperature", "data.timesteps")
# Config keys that are never hyperparameters of interest.
IGNORED = frozenset(
    {
        "run.seed",
        "run.device",
        "run.threads",
        "data.cache_dir",
        "data.root",
        "teacher.weights",
        "run.checkpoint_every",
        "run.eval_every",
        "run.max_epochs",
        "resources.cpus",
        "resources.gpu_fraction",
    }
)
MIN_COMPLETE = 3
# Below this many ranked trials a ranking is flagged as weak evidence (noise alone gives one a leader).
MIN_RANKED = 20
# Fits with the objective shuffled across trials: the importance each parameter gets from noise alone.
NOISE_REPEATS = 3


@dataclass
class Importances:
    """Normalised importances per evaluator (each sums to 1), and what went into them."""

    params: list[str]
    by_method: dict[str, dict[str, float]] = field(default_factory=dict)
    n_trials: int = 0
    notes: list[str] = field(default_factory=list)
    # per value of a switching key ("kd.schedule=phased"): the ranking within those trials
    by_group: dict[str, Importances] = field(default_factory=dict)
    # per method: each parameter's mean importance over fits with the objective shuffled
    noise: dict[str, dict[str, float]] = field(default_factory=dict)
    n_all: int = 0  # trials given, whatever their status
    n_pruned: int = 0
    used_pruned: bool = False  # too few complete trials: pruned ones counted with their last value

    def table(self, with_noise: bool = False) -> pd.DataFrame:
        """One row per parameter, one column per method (and its noise floor), sorted by the first."""
        columns = dict(self.by_method)
        if with_noise:
            columns.update({f"{m} noise floor": v for m, v in self.noise.items()})
        df = pd.DataFrame(columns).reindex(self.params)
        if not df.empty:
            df = df.sort_values(df.columns[0], ascending=False)
        df.index.name = "parameter"
        return df

    def basis(self) -> str:
        """Which trials the ranking rests on, in words."""
        if self.used_pruned:
            return f"{self.n_trials} of {self.n_all} trials, pruned ones with their last (low-budget) value"
        text = f"{self.n_trials} complete of {self.n_all} trials"
        if self.n_pruned:
            text += f" ({self.n_pruned} pruned by ASHA and excluded; ranking conditional on surviving ASHA)"
        return text


def candidate_params(trials: pd.DataFrame, extra: Sequence[str] = ()) -> list[str]:
    """The core parameters that vary, then any other varying config key in ``extra`` or the table."""

    def varies(key: str) -> bool:
        return key in trials and trials[key].astype(str).nunique(dropna=False) > 1

    core = [p for p in CORE_PARAMS if varies(p)]
    others = [
        c
        for c in list(extra) + sorted(trials.columns)
        if "." in c and c not in core and c not in IGNORED and varies(c)
    ]
    return core + list(dict.fromkeys(others))


def infer_distribution(
    name: str, values: pd.Series, log_params: frozenset[str] = LOG_PARAMS
) -> BaseDistribution:
    """A distribution covering the observed values: float/int range or categorical. A log parameter
    with positive values gets a float range over log10 of them (see :func:`study_values`)."""
    vals = values.dropna()
    if not pd.api.types.is_numeric_dtype(vals) or vals.map(lambda v: isinstance(v, bool | str)).any():
        return CategoricalDistribution(sorted({_cat(v) for v in vals}, key=str))
    lo, hi = float(vals.min()), float(vals.max())
    if _log_scaled(name, values, log_params):  # np.log10, as study_values: the bounds hold the values
        logs = np.log10(vals.astype(float).to_numpy())
        return FloatDistribution(float(logs.min()), float(logs.max()))
    if np.allclose(vals, np.round(vals)) and pd.api.types.is_integer_dtype(vals):
        return IntDistribution(int(lo), int(hi))
    return FloatDistribution(lo, hi)


def study_values(trials: pd.DataFrame, params: Sequence[str], log_params: frozenset[str]) -> pd.DataFrame:
    """``trials`` with each positive log parameter replaced by log10 of its values."""
    out = trials.copy()
    for p in params:
        if _log_scaled(p, out[p], log_params):
            out[p] = np.log10(out[p].astype(float))
    return out


def _log_scaled(name: str, values: pd.Series, log_params: frozenset[str]) -> bool:
    """A log parameter whose (numeric) values are all positive: it enters the study as log10."""
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    return name in log_params and numeric and float(values.min()) > 0


def _cat(value: Any) -> Any:
    return value if isinstance(value, bool | int | float | str) or value is None else str(value)


def build_study(
    trials: pd.DataFrame,
    params: Sequence[str],
    epochs: pd.DataFrame | None = None,
    ranking: Ranking = ACCURACY,
    use_pruned_values: bool = False,
    log_params: frozenset[str] = LOG_PARAMS,
) -> optuna.Study:
    """An in-memory study holding one FrozenTrial per row of ``trials``, in ``ranking``'s direction.

    Args:
        trials: the per-trial table (``status``, ``metric`` and the ``params`` columns).
        params: the parameters to include (rows with a missing value are skipped).
        epochs: optional per-epoch table for intermediate values.
        ranking: the objective column and its direction.
        use_pruned_values: add pruned trials as COMPLETE with their last value (when too few
            trials completed).
        log_params: parameters that enter as log10 of their (positive) values.
    """
    dists = {p: infer_distribution(p, trials[p], log_params) for p in params}
    trials = study_values(trials, params, log_params)
    with _quiet_optuna():
        study = optuna.create_study(direction="minimize" if ranking.ascending else "maximize")
    curves = _intermediate(epochs)
    for row in trials.to_dict("records"):
        value = row.get(ranking.column)
        if any(_missing(row.get(p)) for p in params):
            continue
        complete = row["status"] == "complete" or use_pruned_values
        if complete and _missing(value):
            continue
        trial_params = {p: _param_value(row[p], dists[p]) for p in params}
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE if complete else TrialState.PRUNED,
                value=float(value) if complete else None,
                params=trial_params,
                distributions=dists,
                intermediate_values=curves.get(str(row["trial_id"]), {}),
                user_attrs={"trial_id": str(row["trial_id"])},
            )
        )
    return study


def _intermediate(epochs: pd.DataFrame | None) -> dict[str, dict[int, float]]:
    if epochs is None or epochs.empty or "test_acc" not in epochs:
        return {}
    out: dict[str, dict[int, float]] = {}
    for rec in epochs[["trial_id", "epoch", "test_acc"]].dropna().to_dict("records"):
        out.setdefault(str(rec["trial_id"]), {})[int(rec["epoch"])] = float(rec["test_acc"])
    return out


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _param_value(value: Any, dist: BaseDistribution) -> Any:
    if isinstance(dist, IntDistribution):
        return int(value)
    if isinstance(dist, FloatDistribution):
        return float(value)
    return _cat(value)


def mask_inactive(
    trials: pd.DataFrame, conditions: Mapping[str, Sequence[Condition]] = ENGINE_CONDITIONS
) -> pd.DataFrame:
    """A copy with each conditional parameter set to NaN in the trials where it does not act."""
    out = trials.copy()
    for param, found in conditions.items():
        if param not in out:
            continue
        for switch, active in found:
            if switch in out:
                inactive = ~out[switch].isin(active)
                if inactive.any():
                    out[param] = out[param].where(~inactive)
    return out


def compute_importances(
    trials: pd.DataFrame,
    params: Sequence[str] | None = None,
    epochs: pd.DataFrame | None = None,
    seed: int = 0,
    ranking: Ranking = ACCURACY,
    facts: SpaceFacts | None = None,
    noise_repeats: int = NOISE_REPEATS,
) -> Importances:
    """PED-ANOVA and fANOVA importances of ``params`` (default: :func:`candidate_params`), each with
    a noise floor from ``noise_repeats`` fits on a shuffled objective.

    Conditional parameters are masked where inactive (``facts.conditions``); those left out of the
    overall ranking for that reason are ranked within each group of trials where they act. Give a
    switch counted in iterations in epochs first (:func:`~.results.switch_in_epochs`), so that
    ``kd.k`` and ``kd.e_th`` mean one thing across ``kd.units``.
    """
    facts = facts or SpaceFacts()
    params = list(params) if params is not None else candidate_params(trials)
    trials = mask_inactive(trials, facts.conditions)
    rank = functools.partial(
        _rank, epochs=epochs, seed=seed, ranking=ranking, log_params=facts.log_params, repeats=noise_repeats
    )
    result = rank(trials, params)
    kinds = (
        set(trials.loc[trials["kd.k"].notna(), "kd.schedule"])
        if {"kd.k", "kd.schedule"} <= set(trials)
        else set()
    )
    if "kd.k" in result.params and {"phased", "adaptive"} <= kinds:
        result.notes.append(
            "kd.k here mixes the phased k (per epoch) and the adaptive k (per unit of P_replace - p_th); "
            "read it within each schedule below"
        )
    gapped = [p for p in params if p in facts.conditions and trials[p].isna().any()]
    switches = {switch for p in gapped for switch, _ in facts.conditions[p]}
    for switch in sorted(s for s in switches if s in trials):
        for value, group in trials.groupby(switch, sort=True):
            active = [
                p
                for p in params
                if p != switch and not group[p].isna().any() and group[p].astype(str).nunique() > 1
            ]
            if len(group) >= 2 and any(p in gapped for p in active):
                result.by_group[f"{switch}={value}"] = rank(group, active)
    return result


def _rank(
    trials: pd.DataFrame,
    params: Sequence[str],
    epochs: pd.DataFrame | None,
    seed: int,
    ranking: Ranking,
    log_params: frozenset[str],
    repeats: int = NOISE_REPEATS,
) -> Importances:
    """The two evaluators over ``params`` on the trials given, and their noise floor."""
    params = list(params)
    result = Importances(params=params, n_all=len(trials), n_pruned=int((trials["status"] == "pruned").sum()))
    if trials.empty:
        result.params = []
        result.notes.append("no trials left to rank")
        return result
    params = [p for p in params if p in trials and trials[p].astype(str).nunique(dropna=False) > 1]
    result.params = params  # a parameter that varies in all trials may not among those given
    if not params:
        result.notes.append("no hyperparameter varies across trials: nothing to rank")
        return result
    gaps = [p for p in params if trials[p].isna().any()]
    if gaps:
        result.notes.append(f"left out (unset or inactive in some trials): {', '.join(gaps)}")
        params = [p for p in params if p not in gaps]
        result.params = params
    n_complete = int((trials["status"] == "complete").sum())
    result.used_pruned = n_complete < MIN_COMPLETE
    if result.used_pruned:
        result.notes.append(
            f"only {n_complete} complete trial(s): pruned trials counted with their "
            "last value (low-budget; read with care)"
        )
    build = functools.partial(
        build_study,
        params=params,
        epochs=epochs,
        ranking=ranking,
        use_pruned_values=result.used_pruned,
        log_params=log_params,
    )
    study = build(trials)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    result.n_trials = len(done)
    if len(done) < 2:
        result.notes.append(f"{len(done)} usable trial(s): importances need at least 2")
        return result
    if len({t.value for t in done}) == 1:
        result.notes.append("every usable trial has the same value: no parameter explains anything")
        return result
    if len(done) < MIN_RANKED:
        result.notes.append(
            f"only {len(done)} trials ranked (fewer than {MIN_RANKED}): noise alone gives such a ranking "
            "a clear leader; read each share against its noise floor"
        )
    quantile = max(0.1, min(0.5, 2.0 / len(done)))
    if quantile != 0.1:
        result.notes.append(f"PED-ANOVA target quantile {quantile:.2f} (top trials >= 2 of {len(done)})")
    result.by_method = _evaluate(study, params, quantile, seed, result.notes)
    if result.by_method and repeats > 0:
        # the same fits with the objective shuffled across the ranked trials: what noise alone earns
        rng = np.random.default_rng(seed)
        counted = (trials["status"] == "complete") | result.used_pruned
        counted &= trials[ranking.column].notna()
        sums: dict[str, dict[str, float]] = {m: dict.fromkeys(params, 0.0) for m in result.by_method}
        for i in range(repeats):
            shuffled = trials.copy()
            shuffled.loc[counted, ranking.column] = rng.permutation(
                trials.loc[counted, ranking.column].to_numpy()
            )
            for method, shares in _evaluate(build(shuffled), params, quantile, seed + 1 + i, []).items():
                for p, v in shares.items():
                    sums.setdefault(method, dict.fromkeys(params, 0.0))[p] += v / repeats
        result.noise = {m: v for m, v in sums.items() if m in result.by_method}
        result.notes.append(
            f"noise floor: each parameter's mean share over {repeats} fits with the objective shuffled "
            "across the trials; a share not clearly above it is indistinguishable from noise"
        )
    return result


def _evaluate(
    study: optuna.Study, params: Sequence[str], quantile: float, seed: int, notes: list[str]
) -> dict[str, dict[str, float]]:
    """Normalised PED-ANOVA and fANOVA importances of ``params`` (a failing method is noted, left out)."""
    evaluators: dict[str, optuna.importance.BaseImportanceEvaluator] = {
        "PED-ANOVA": optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile),
        "fANOVA": optuna.importance.FanovaImportanceEvaluator(seed=seed),
    }
    out: dict[str, dict[str, float]] = {}
    for name, evaluator in evaluators.items():
        try:
            with _quiet_optuna():
                raw = optuna.importance.get_param_importances(
                    study, evaluator=evaluator, params=list(params), normalize=False
                )
        except (ValueError, RuntimeError) as err:
            notes.append(f"{name} failed: {err}")
            continue
        out[name] = normalise({p: float(raw.get(p, 0.0)) for p in params})
    return out


def normalise(values: dict[str, float]) -> dict[str, float]:
    """Scale non-negative importances to sum to 1 (all zero stays all zero)."""
    clean = {k: max(0.0, v) if math.isfinite(v) else 0.0 for k, v in values.items()}
    total = sum(clean.values())
    return {k: v / total for k, v in clean.items()} if total > 0 else clean


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)
