"""Search-space YAML files: schema, validation and sampling.

One YAML mapping per study. Sections and keys not listed here are errors; every error is one line
naming the file, the key and the value (``space.kd.k.low=-1.0 must be > 0 for a log scale``).

.. code-block:: yaml

    study:                          # all optional
      name: switching               # study / MLflow experiment name (default: the file's stem)
      metric: best_test_acc         # an engine metric, or a list of them (multi-objective)
      mode: max                     # max | min, or a list as long as the metric list
      num_trials: 32                # trials to run (>= 1)
      seed: 0                       # seed of the searcher (0 .. 2**32 - 1)
      max_concurrent: 4             # cap on trials at once (default: what the resources allow)
      max_failures: 1               # retries of a crashed trial from its last checkpoint
    fixed:                          # dotted engine-config keys (ckd_search.config), held constant
      run.epochs: 30
    space:                          # dotted engine-config keys, sampled per trial
      optim.lr:       {type: loguniform, low: 1.0e-4, high: 1.0e-2}   # low > 0
      kd.temperature: {type: uniform, low: 1.0, high: 8.0}
      optim.batch_size: {type: int, low: 16, high: 128, log: true}    # bounds inclusive; log: int only
      data.timesteps: {type: choice, values: [4, 6, 10]}              # {type: grid, ...}: searcher grid
      kd.schedule:    {type: choice, values: [phased, adaptive]}
      kd.p_th:        {type: uniform, low: 0.2, high: 0.8,
                       condition: {kd.schedule: adaptive}}            # only when kd.schedule == adaptive
    scheduler: none                 # or {asha: {max_t: 30, grace_period: 3, reduction_factor: 3}}
    searcher: tpe                   # tpe | random | grid | cmaes | nsga2, or {type: tpe, n_startup_trials: 8}
    resources: {cpu: 1, gpu: 0.25}  # per trial: CPU cores, share of one GPU (0 = CPU trial)

Rules checked by :func:`load_space` (before Ray starts):

- ``space`` lists at least one parameter;
- every key in ``fixed`` and ``space`` is a leaf of the engine config (``leaf_keys()``); a key is
  not both fixed and searched; ``resources.*`` is set in the ``resources`` section only;
- ``uniform``/``loguniform`` need a float config field, ``int`` an int or float one; ``low < high``;
  ``loguniform`` and ``int`` with ``log: true`` need ``low > 0``; ``choice``/``grid`` need a non-empty
  list of distinct scalars; every bound and value is valid for its config field (``Config.from_dict``);
- ``condition`` names another ``choice``/``grid`` parameter and one (or a list) of its values; no cycles;
- ``grid`` parameters need ``searcher: grid``, which takes only ``grid``/``choice`` parameters
  without conditions (GridSampler would run the same config several times);
- ``scheduler.asha``: ``max_t >= 1``, ``1 <= grace_period <= max_t``, ``reduction_factor > 1``;
  ASHA needs one metric (pitfall 1: it cannot rank several);
- a list of metrics needs ``searcher: tpe`` or ``nsga2``; ``nsga2`` needs a list of metrics;
- every metric is reported on every epoch of every trial (Tune stops a trial missing it):
  ``test_acc``, ``timesteps``, ``sops_per_sample``, ``energy_uj`` need ``run.eval_every: 1``;
  ``loss_kd`` and ``teacher_test_acc`` need KD (``kd.enabled`` and ``loss.method: ckd``);
  ``loss_cls_s`` and ``loss_da`` need ``loss.method: ckd``;
- ``resources.cpu > 0``; ``0 <= resources.gpu <= 1`` (0 = CPU trial, else ``0 < gpu <= 1``);
- ``data.*``/``teacher.*`` parameters change the prepared data and teacher, which a search prepares
  once per distinct setting on the driver: they must be ``choice`` (or ``grid``);
- the file is UTF-8 text with a mapping at the top level.

:func:`check_paths` (``check-space`` and ``search`` run it before anything is written or Ray starts)
checks that every ``data.root`` is an existing folder and every ``teacher.weights`` an existing file.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import typing
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from ckd_search.config import LOCAL_PATH_KEYS
from ckd_search.config import Config
from ckd_search.config import dotted_items
from ckd_search.config import load_yaml_mapping
from ckd_search.config import local_path_problem
from ckd_search.errors import ConfigError
from ckd_search.errors import UserError

PARAM_TYPES = ("uniform", "loguniform", "int", "choice", "grid")
SEARCHERS = ("tpe", "random", "grid", "cmaes", "nsga2")
SECTIONS = ("study", "fixed", "space", "scheduler", "searcher", "resources")
STUDY_KEYS = ("name", "metric", "mode", "num_trials", "seed", "max_concurrent", "max_failures")
ASHA_KEYS = ("max_t", "grace_period", "reduction_factor")
SEARCHER_OPTIONS: dict[str, tuple[str, ...]] = {
    "tpe": ("n_startup_trials",),
    "random": (),
    "grid": (),
    "cmaes": ("n_startup_trials", "sigma0"),
    "nsga2": ("population_size",),
}
PARAM_KEYS: dict[str, tuple[str, ...]] = {
    "uniform": ("low", "high"),
    "loguniform": ("low", "high"),
    "int": ("low", "high", "log"),
    "choice": ("values",),
    "grid": ("values",),
}
#: Metrics the engine reports (engine.fit's ``on_epoch_end``); ``study.metric`` is one of them. Some
#: are missing from some epochs or runs (below), which Tune refuses for its metric.
ENGINE_METRICS = frozenset(
    {
        "test_acc",
        "best_test_acc",
        "train_acc",
        "train_loss",
        "loss_cls_s",
        "loss_cls_e",
        "loss_kd",
        "loss_da",
        "gamma",
        "p_replace",
        "sops_per_sample",
        "energy_uj",
        "timesteps",
        "epoch_time_s",
        "pairs_per_s",
        "lr",
        "epoch",
        "teacher_test_acc",
    }
)
#: Reported only on evaluation epochs (engine.fit: every ``run.eval_every`` epochs and the last).
EVAL_METRICS = frozenset({"test_acc", "timesteps", "sops_per_sample", "energy_uj"})
#: Reported only when the run distils from a teacher (``kd.enabled`` and ``loss.method: ckd``).
KD_METRICS = frozenset({"loss_kd", "teacher_test_acc"})
#: Reported only by the two-stream loss (``loss.method: ckd``; dvs_only has loss_cls_e alone).
TWO_STREAM_METRICS = frozenset({"loss_cls_s", "loss_da"})
#: Optuna's samplers seed numpy's generator, which takes at most 32 bits.
MAX_SEED = 2**32 - 1
STUDY_NAME = re.compile(r"[A-Za-z0-9._-]+")
#: Prefixes of config keys whose values change ``engine.prepare_key`` (data and teacher).
PREPARE_PREFIXES = ("data.", "teacher.")
Scalar = bool | int | float | str | None


# --- the parsed file ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One searched config key."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    values: tuple[Scalar, ...] = ()
    condition: tuple[tuple[str, tuple[Scalar, ...]], ...] = ()

    @property
    def discrete(self) -> bool:
        return self.type in ("choice", "grid")

    def applies(self, drawn: Mapping[str, Any]) -> bool:
        """True when every condition holds for the values drawn so far."""
        return all(k in drawn and drawn[k] in allowed for k, allowed in self.condition)

    def draw(self, rng: random.Random) -> Any:
        """A random value (uniform in the parameter's own scale)."""
        if self.discrete:
            return self.values[rng.randrange(len(self.values))]
        assert self.low is not None and self.high is not None
        if self.type == "int":
            lo, hi = int(self.low), int(self.high)
            if self.log:
                return min(hi, max(lo, round(math.exp(rng.uniform(math.log(lo), math.log(hi))))))
            return rng.randint(lo, hi)
        if self.type == "loguniform":
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return rng.uniform(self.low, self.high)

    def suggest(self, trial: Any) -> Any:
        """Ask an ``optuna.Trial`` for this parameter."""
        if self.discrete:
            return trial.suggest_categorical(self.key, list(self.values))
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low or 0), int(self.high or 0), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.type == "loguniform")

    def probe_values(self) -> list[Any]:
        """Values worth validating against the config: bounds, or every listed value."""
        if self.discrete:
            return list(self.values)
        if self.type == "int":
            return [int(self.low or 0), int(self.high or 0)]
        return [self.low, self.high]

    def describe(self) -> str:
        if self.discrete:
            text = f"{self.type} {list(self.values)}"
        else:
            scale = " log" if self.log else ""
            text = f"{self.type} [{self.low:g}, {self.high:g}]{scale}"
        if self.condition:
            text += " if " + ", ".join(f"{k} in {list(v)}" for k, v in self.condition)
        return text


@dataclass(frozen=True)
class Study:
    name: str
    metrics: tuple[str, ...] = ("best_test_acc",)
    modes: tuple[str, ...] = ("max",)
    num_trials: int = 16
    seed: int = 0
    max_concurrent: int | None = None
    max_failures: int = 1

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    @property
    def metric(self) -> str:
        """The first (or only) metric: what Tune and ASHA rank by."""
        return self.metrics[0]

    @property
    def mode(self) -> str:
        return self.modes[0]


@dataclass(frozen=True)
class Asha:
    max_t: int
    grace_period: int = 1
    reduction_factor: float = 4.0


@dataclass(frozen=True)
class Searcher:
    type: str = "tpe"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class SearchSpace:
    """A validated search-space file."""

    path: str
    study: Study
    fixed: Mapping[str, Any]
    params: tuple[Param, ...]
    scheduler: Asha | None
    searcher: Searcher
    resources: Resources

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(p.key for p in self.params)

    @property
    def has_conditions(self) -> bool:
        return any(p.condition for p in self.params)

    def param(self, key: str) -> Param:
        return next(p for p in self.params if p.key == key)

    def draw(self, rng: random.Random) -> dict[str, Any]:
        """One random draw of the applicable parameters (params are in dependency order)."""
        drawn: dict[str, Any] = {}
        for p in self.params:
            if p.applies(drawn):
                drawn[p.key] = p.draw(rng)
        return drawn

    def trial_config(self, drawn: Mapping[str, Any], resources: Resources | None = None) -> dict[str, Any]:
        """Flat dotted config of one trial: fixed values, per-trial resources, drawn values."""
        res = resources or self.resources
        return {**self.fixed, "resources.cpus": res.cpu, "resources.gpu_fraction": res.gpu, **drawn}

    def build_config(self, drawn: Mapping[str, Any], resources: Resources | None = None) -> Config:
        return Config.from_dict(self.trial_config(drawn, resources))

    def possible_values(self, key: str) -> set[Any]:
        """Values ``key`` can take in a trial: the fixed (or default) one, or those searched."""
        default = Config().flat()[key]
        if key not in self.keys:
            return {self.fixed.get(key, default)}
        p = self.param(key)
        values = set(p.probe_values())  # int: low < high, so the bounds show whether it varies
        if p.condition:  # where the condition fails, the trial keeps the config default
            values.add(default)
        return values

    def grid_size(self) -> int:
        return math.prod(len(p.values) for p in self.params) if self.params else 1


class SpaceSampler:
    """Optuna define-by-run function for a :class:`SearchSpace` (picklable, unlike a closure).

    Honours conditions: a parameter is suggested only when its condition holds, so Optuna records
    it only for the trials it applies to.
    """

    def __init__(self, params: Sequence[Param]) -> None:
        self.params = tuple(params)

    def __call__(self, trial: Any) -> None:
        drawn: dict[str, Any] = {}
        for p in self.params:
            if p.applies(drawn):
                drawn[p.key] = p.suggest(trial)


# --- loading and validation --------------------------------------------------------------------
def load_space(path: str | Path, overrides: Mapping[str, Any] | None = None) -> SearchSpace:
    """Read and validate a search-space YAML file; errors are one-line UserErrors naming the key.

    ``overrides`` (``--set KEY=VALUE``) replace or add ``fixed`` values before validation.
    """
    p = Path(path).expanduser()
    raw = load_yaml_mapping(p)
    return parse_space(raw, str(p), default_name=p.stem, overrides=overrides)


def check_paths(space: SearchSpace) -> None:
    """Every ``data.root`` (fixed or a choice) is a folder and every ``teacher.weights`` a file."""
    err = _Errors(space.path)
    for key, is_dir in LOCAL_PATH_KEYS:
        if key in space.fixed:
            candidates = [("fixed", space.fixed[key])]
        elif key in space.keys:
            candidates = [("space", v) for v in space.param(key).values]
        else:
            continue
        for where, value in candidates:
            if value is not None and (problem := local_path_problem(value, is_dir)):
                err.fail(f"{where}.{key}", value, problem)


def parse_space(
    raw: Mapping[str, Any],
    where: str = "<space>",
    *,
    default_name: str = "search",
    overrides: Mapping[str, Any] | None = None,
) -> SearchSpace:
    """Validate a mapping with the schema of this module (see the module docstring)."""
    err = _Errors(where)
    for section in raw:
        if section not in SECTIONS:
            err.fail(str(section), raw[section], f"is not a known section (known: {', '.join(SECTIONS)})")
    study = _parse_study(_mapping(raw, "study", err), err, default_name)
    fixed = _parse_fixed(_mapping(raw, "fixed", err), err)
    searched = _mapping(raw, "space", err)
    set_err = _Errors("--set")  # the user's flag, not the file, holds these mistakes
    for key, value in (overrides or {}).items():
        _check_key(key, "", value, set_err, _leaf_types())
        if key in searched:
            set_err.fail(key, value, f"sets a key that {where} searches; drop one of them")
        fixed[key] = value
    params = _parse_params(searched, fixed, err)
    if not params:
        err.fail(
            "space",
            raw.get("space"),
            "must list at least one parameter to search (one fixed config: use `ckd-search train`)",
        )
    scheduler = _parse_scheduler(raw.get("scheduler"), study, err)
    searcher = _parse_searcher(raw.get("searcher", "tpe"), study, params, err)
    resources = _parse_resources(_mapping(raw, "resources", err), err)
    space = SearchSpace(where, study, fixed, params, scheduler, searcher, resources)
    base = _check_against_config(space, err)
    _check_metrics(space, base, err)
    return space


class _Errors:
    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, value: Any, rule: str) -> typing.NoReturn:
        raise UserError(f"{self.where}: {key}={_short(value)} {rule}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _mapping(raw: Mapping[str, Any], section: str, err: _Errors) -> dict[str, Any]:
    value = raw.get(section)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        err.fail(section, value, "must be a mapping")
    return dict(value)


def _number(value: Any, key: str, err: _Errors, *, integer: bool = False) -> float:
    """A finite number (PyYAML reads ``1e-4`` as a string, so strings are parsed too)."""
    if isinstance(value, bool) or value is None:
        err.fail(key, value, "must be an integer" if integer else "must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float
        err.fail(key, value, "must be an integer" if integer else "must be a number")
    if not math.isfinite(number):
        err.fail(key, value, "must be finite")
    if integer and number != int(number):
        err.fail(key, value, "must be an integer")
    return number


def _parse_study(raw: dict[str, Any], err: _Errors, default_name: str) -> Study:
    for key in raw:
        if key not in STUDY_KEYS:
            err.fail(f"study.{key}", raw[key], f"is not a known key (known: {', '.join(STUDY_KEYS)})")
    name = raw.get("name", default_name)
    # the name is a folder, an Optuna study and an MLflow experiment, and goes into MLflow filter
    # strings quoted with ': letters, digits, '.', '_' and '-' only
    if not isinstance(name, str) or not STUDY_NAME.fullmatch(name):
        err.fail("study.name", name, "must be a non-empty name of letters, digits, '.', '_' and '-'")
    metric = raw.get("metric", "best_test_acc")
    metrics = tuple(metric) if isinstance(metric, list) else (metric,)
    if not metrics:
        err.fail("study.metric", metric, "must not be an empty list")
    for m in metrics:
        if not isinstance(m, str):  # a mapping or nested list is unhashable: no set lookup
            err.fail("study.metric", m, "must be a metric name or a list of metric names")
        if m not in ENGINE_METRICS:
            err.fail(
                "study.metric", m, f"is not an engine metric (known: {', '.join(sorted(ENGINE_METRICS))})"
            )
    if len(set(metrics)) != len(metrics):
        err.fail("study.metric", metric, "lists a metric twice")
    mode = raw.get("mode", "max")
    modes = tuple(mode) if isinstance(mode, list) else (mode,) * len(metrics)
    if len(modes) != len(metrics):
        err.fail("study.mode", mode, f"must be one mode or a list of {len(metrics)} (one per metric)")
    for m in modes:
        if m not in ("max", "min"):
            err.fail("study.mode", m, "must be max or min")
    num_trials = int(_number(raw.get("num_trials", 16), "study.num_trials", err, integer=True))
    if num_trials < 1:
        err.fail("study.num_trials", num_trials, "must be >= 1")
    seed = int(_number(raw.get("seed", 0), "study.seed", err, integer=True))
    if not 0 <= seed <= MAX_SEED:
        err.fail("study.seed", seed, f"must be in 0 .. {MAX_SEED} (2**32 - 1)")
    max_conc = raw.get("max_concurrent")
    if max_conc is not None:
        max_conc = int(_number(max_conc, "study.max_concurrent", err, integer=True))
        if max_conc < 1:
            err.fail("study.max_concurrent", max_conc, "must be >= 1")
    max_failures = int(_number(raw.get("max_failures", 1), "study.max_failures", err, integer=True))
    if max_failures < -1:
        err.fail("study.max_failures", max_failures, "must be >= -1 (-1 = retry forever)")
    return Study(name, metrics, modes, num_trials, seed, max_conc, max_failures)


def _leaf_types() -> dict[str, tuple[type, bool]]:
    """Dotted key -> (base type, optional) for every leaf of the engine config."""
    out: dict[str, tuple[type, bool]] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for fld in dataclasses.fields(cls):
            hint = hints[fld.name]
            if dataclasses.is_dataclass(hint):
                walk(hint, f"{prefix}{fld.name}.")  # type: ignore[arg-type]
                continue
            args = typing.get_args(hint)
            optional = type(None) in args
            base = next((a for a in args if a is not type(None)), hint) if args else hint
            out[f"{prefix}{fld.name}"] = (base, optional)

    walk(Config, "")
    return out


def _check_key(key: Any, where: str, value: Any, err: _Errors, types: Mapping[str, Any]) -> str:
    """``key`` if it is an engine config key; ``where`` is its section ("" for --set)."""
    label = f"{where}.{key}" if where else str(key)
    if not isinstance(key, str) or key not in types:
        section = str(key).split(".")[0] if isinstance(key, str) else ""
        known = sorted(k for k in types if k.startswith(section + ".")) if section else []
        hint = (
            f" (known {section}.* keys: {', '.join(known)})" if known else " (`ckd-search config` lists them)"
        )
        err.fail(label, value, f"is not a key of the engine config{hint}")
    if key.startswith("resources."):
        err.fail(label, value, "is set in the `resources` section (cpu, gpu), not here")
    return key


def _parse_fixed(raw: dict[str, Any], err: _Errors) -> dict[str, Any]:
    types = _leaf_types()
    fixed: dict[str, Any] = {}
    for key, value in dotted_items(raw):
        _check_key(key, "fixed", value, err, types)
        if key in fixed:  # `kd.k: 1` and `kd: {k: 2}`: YAML sees two keys, the config one
            err.fail(f"fixed.{key}", value, f"is given twice, nested and dotted (the other: {fixed[key]!r})")
        fixed[key] = value
    return fixed


def _parse_params(raw: dict[str, Any], fixed: Mapping[str, Any], err: _Errors) -> tuple[Param, ...]:
    types = _leaf_types()
    params: dict[str, Param] = {}
    for key, spec in raw.items():
        where = f"space.{key}"
        _check_key(key, "space", spec, err, types)
        if key in fixed:
            err.fail(where, spec, "is both fixed and searched; keep one")
        if not isinstance(spec, Mapping):
            err.fail(where, spec, "must be a mapping like {type: uniform, low: 0.1, high: 1.0}")
        ptype = spec.get("type")
        if ptype not in PARAM_TYPES:
            err.fail(f"{where}.type", ptype, f"must be one of {', '.join(PARAM_TYPES)}")
        allowed = (*PARAM_KEYS[ptype], "type", "condition")
        for k in spec:
            if k not in allowed:
                err.fail(
                    f"{where}.{k}",
                    spec[k],
                    f"is not a key of a {ptype} parameter (known: {', '.join(allowed)})",
                )
        base, _ = types[key]
        condition = _parse_condition(spec.get("condition"), where, err)
        if ptype in ("choice", "grid"):
            params[key] = Param(key, ptype, values=_parse_values(spec, where, err), condition=condition)
            continue
        for k in ("low", "high"):
            if k not in spec:
                err.fail(f"{where}.{k}", None, f"is required for a {ptype} parameter")
        integer = ptype == "int"
        low = _number(spec["low"], f"{where}.low", err, integer=integer)
        high = _number(spec["high"], f"{where}.high", err, integer=integer)
        log = spec.get("log", False)
        if not isinstance(log, bool):
            err.fail(f"{where}.log", log, "must be true or false")
        if ptype in ("uniform", "loguniform") and base is not float:
            hint = "; use type int or choice" if base is int else "; use type choice"
            err.fail(
                f"{where}.type", ptype, f"needs a float config field, but {key} is {base.__name__}{hint}"
            )
        if ptype == "int" and base not in (int, float):
            err.fail(
                f"{where}.type",
                ptype,
                f"needs a numeric config field, but {key} is {base.__name__}; use choice",
            )
        if not low < high:
            err.fail(f"{where}.low", low, f"must be < high ({high:g})")
        if (ptype == "loguniform" or log) and low <= 0:
            err.fail(f"{where}.low", low, "must be > 0 for a log scale")
        if integer:
            low, high = int(low), int(high)
        params[key] = Param(key, ptype, low=low, high=high, log=bool(log), condition=condition)
    for p in params.values():
        for ckey, cvalues in p.condition:
            other = params.get(ckey)
            if other is None or not other.discrete:
                err.fail(
                    f"space.{p.key}.condition", ckey, "must name a choice or grid parameter of this space"
                )
            for v in cvalues:
                if v not in other.values:
                    err.fail(
                        f"space.{p.key}.condition.{ckey}", v, f"is not one of its values {list(other.values)}"
                    )
    for key, p in params.items():
        if key.startswith(PREPARE_PREFIXES) and not p.discrete:
            err.fail(
                f"space.{key}.type",
                p.type,
                "must be choice (data and teacher are prepared once per "
                "distinct value on the driver, so data.*/teacher.* cannot be continuous)",
            )
    return tuple(_dependency_order(params, err))


def _parse_values(spec: Mapping[str, Any], where: str, err: _Errors) -> tuple[Scalar, ...]:
    values = spec.get("values")
    if not isinstance(values, list) or not values:
        err.fail(f"{where}.values", values, "must be a non-empty list")
    for v in values:
        if not isinstance(v, bool | int | float | str) and v is not None:
            err.fail(f"{where}.values", v, "must hold scalars (numbers, strings, booleans, null)")
        if isinstance(v, float) and not math.isfinite(v):
            err.fail(f"{where}.values", v, "must be finite")
    if len(set(values)) != len(values):  # by ==, as Optuna stores a choice (1 and 1.0 are one choice)
        err.fail(f"{where}.values", values, "lists a value twice")
    return tuple(values)


def _parse_condition(raw: Any, where: str, err: _Errors) -> tuple[tuple[str, tuple[Scalar, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping) or not raw:
        err.fail(f"{where}.condition", raw, "must be a mapping {other_key: value}")
    out = []
    for key, value in raw.items():
        values = tuple(value) if isinstance(value, list) else (value,)
        if not values:
            err.fail(f"{where}.condition.{key}", value, "must not be an empty list")
        out.append((str(key), values))
    return tuple(out)


def _dependency_order(params: Mapping[str, Param], err: _Errors) -> list[Param]:
    """Parameters sorted so a condition's key comes first; cycles are errors."""
    ordered: list[Param] = []
    state: dict[str, int] = {}

    def visit(key: str, chain: tuple[str, ...]) -> None:
        if state.get(key) == 2:
            return
        if state.get(key) == 1:
            err.fail(f"space.{key}.condition", " -> ".join((*chain, key)), "forms a cycle")
        state[key] = 1
        for ckey, _ in params[key].condition:
            visit(ckey, (*chain, key))
        state[key] = 2
        ordered.append(params[key])

    for key in params:
        visit(key, ())
    return ordered


def _parse_scheduler(raw: Any, study: Study, err: _Errors) -> Asha | None:
    if raw is None or raw == "none" or raw is False:
        return None
    if raw == "asha":
        err.fail("scheduler", raw, "needs settings: {asha: {max_t: N, grace_period: G, reduction_factor: R}}")
    if not isinstance(raw, Mapping) or list(raw) != ["asha"]:
        err.fail("scheduler", raw, "must be none or {asha: {max_t, grace_period, reduction_factor}}")
    spec = raw["asha"]
    if not isinstance(spec, Mapping):
        err.fail("scheduler.asha", spec, "must be a mapping {max_t, grace_period, reduction_factor}")
    for k in spec:
        if k not in ASHA_KEYS:
            err.fail(f"scheduler.asha.{k}", spec[k], f"is not a known key (known: {', '.join(ASHA_KEYS)})")
    if "max_t" not in spec:
        err.fail("scheduler.asha.max_t", None, "is required (epochs of a full trial)")
    max_t = int(_number(spec["max_t"], "scheduler.asha.max_t", err, integer=True))
    grace = int(_number(spec.get("grace_period", 1), "scheduler.asha.grace_period", err, integer=True))
    rf = _number(spec.get("reduction_factor", 4), "scheduler.asha.reduction_factor", err)
    if max_t < 1:
        err.fail("scheduler.asha.max_t", max_t, "must be >= 1")
    if grace < 1:
        err.fail("scheduler.asha.grace_period", grace, "must be >= 1")
    if grace > max_t:
        err.fail("scheduler.asha.grace_period", grace, f"must be <= max_t ({max_t})")
    if rf <= 1:
        err.fail("scheduler.asha.reduction_factor", rf, "must be > 1")
    if study.multi_objective:
        err.fail("scheduler", "asha", "cannot rank several metrics; use scheduler: none with a metric list")
    return Asha(max_t, grace, rf)


def _parse_searcher(raw: Any, study: Study, params: Sequence[Param], err: _Errors) -> Searcher:
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, Mapping):
        err.fail("searcher", raw, f"must be one of {', '.join(SEARCHERS)} or {{type: NAME, ...options}}")
    stype = raw.get("type")
    if stype not in SEARCHERS:
        err.fail(
            "searcher.type" if "type" in raw else "searcher", stype, f"must be one of {', '.join(SEARCHERS)}"
        )
    options = {k: v for k, v in raw.items() if k != "type"}
    for k, v in options.items():
        if k not in SEARCHER_OPTIONS[stype]:
            known = ", ".join(SEARCHER_OPTIONS[stype]) or "none"
            err.fail(f"searcher.{k}", v, f"is not an option of {stype} (known: {known})")
        if k == "sigma0":
            if _number(v, f"searcher.{k}", err) <= 0:
                err.fail(f"searcher.{k}", v, "must be > 0")
        elif int(_number(v, f"searcher.{k}", err, integer=True)) < (2 if k == "population_size" else 0):
            err.fail(f"searcher.{k}", v, f"must be >= {2 if k == 'population_size' else 0}")
    if study.multi_objective and stype not in ("tpe", "nsga2"):
        err.fail("searcher", stype, "cannot optimise several metrics; use tpe or nsga2")
    if stype == "nsga2" and not study.multi_objective:
        err.fail("searcher", stype, "is for several metrics (study.metric as a list); use tpe")
    if stype == "grid":
        for p in params:
            if not p.discrete:
                err.fail(
                    f"space.{p.key}.type",
                    p.type,
                    "cannot be enumerated by searcher: grid; use grid or choice",
                )
            if p.condition:
                # GridSampler enumerates the full product: skipping a conditioned key repeats configs
                err.fail(
                    f"space.{p.key}.condition",
                    {k: list(v) for k, v in p.condition},
                    "cannot be used with searcher: grid (it would run the same config several "
                    "times); drop the condition or use searcher: tpe or random",
                )
    else:
        for p in params:
            if p.type == "grid":
                err.fail(
                    f"space.{p.key}.type", "grid", f"needs searcher: grid (searcher is {stype}); use choice"
                )
    return Searcher(stype, options)


def _parse_resources(raw: dict[str, Any], err: _Errors) -> Resources:
    for k in raw:
        if k not in ("cpu", "gpu"):
            err.fail(f"resources.{k}", raw[k], "is not a known key (known: cpu, gpu)")
    cpu = _number(raw.get("cpu", 1), "resources.cpu", err)
    gpu = _number(raw.get("gpu", 0), "resources.gpu", err)
    if cpu <= 0:
        err.fail("resources.cpu", cpu, "must be > 0")
    if not 0 <= gpu <= 1:
        err.fail("resources.gpu", gpu, "must be in (0, 1] (share of one GPU per trial), or 0 for CPU trials")
    return Resources(cpu, gpu)


def _check_against_config(space: SearchSpace, err: _Errors) -> Config:
    """Build configs from fixed values plus the bounds/values of each parameter (ConfigError -> key).

    Returns the config of the first probe: its unsearched values are those of every trial.
    """
    base: dict[str, Any] = {}
    for p in space.params:
        if p.applies(base):
            base[p.key] = p.probe_values()[0]
    try:
        config = space.build_config(base)
    except ConfigError as exc:
        where = "fixed" if exc.key in space.fixed or exc.key not in space.keys else "space"
        err.fail(f"{where}.{exc.key}", exc.value, exc.rule)
    for p in space.params:
        context = dict(base)
        for ckey, cvalues in p.condition:
            context[ckey] = cvalues[0]
        for value in p.probe_values():
            try:
                space.build_config({**context, p.key: value})
            except ConfigError as exc:
                detail = "" if exc.key == p.key else f" ({exc.key}={exc.value!r} {exc.rule})"
                rule = exc.rule if exc.key == p.key else "gives an invalid config"
                err.fail(f"space.{p.key}", value, rule + detail)
    return config


def _trial_values(space: SearchSpace, base: Config, key: str) -> set[Any]:
    """:meth:`SearchSpace.possible_values`, with a fixed value as the config coerced it."""
    return space.possible_values(key) if key in space.keys else {base.flat()[key]}


def _check_metrics(space: SearchSpace, base: Config, err: _Errors) -> None:
    """Refuse metrics some epochs or runs never report: Tune stops a trial missing its metric."""
    eval_every = _trial_values(space, base, "run.eval_every")
    enabled = _trial_values(space, base, "kd.enabled")
    methods = _trial_values(space, base, "loss.method")
    for m in space.study.metrics:
        if m in EVAL_METRICS and eval_every != {1}:
            shown = ", ".join(str(v) for v in sorted(eval_every))
            err.fail(
                "study.metric",
                m,
                f"is reported only on evaluation epochs, but run.eval_every is {shown} (not 1); "
                "set run.eval_every: 1 or use best_test_acc",
            )
        # every trial must report it: Ray stops the whole search at the first result without it
        if m in TWO_STREAM_METRICS and methods != {"ckd"}:
            err.fail("study.metric", m, "is not reported with loss.method: dvs_only (one stream only)")
        if m in KD_METRICS and (enabled != {True} or methods != {"ckd"}):
            key, value, value_set = (
                ("kd.enabled", "false", enabled)
                if enabled != {True}
                else ("loss.method", "dvs_only", methods)
            )
            why = f"{key} {'is' if len(value_set) == 1 else 'can be'} {value}"
            err.fail("study.metric", m, f"is reported only when the run distils from a teacher, but {why}")
    threads = {t for t in _trial_values(space, base, "run.threads") if t is not None}
    if threads and max(threads) > space.resources.cpu:
        where = "space" if "run.threads" in space.keys else "fixed"
        cpu = space.resources.cpu
        rule = f"must be <= resources.cpu ({cpu:g}): a trial uses the cores it reserved"
        err.fail(f"{where}.run.threads", max(threads), rule)


def check_draws(
    space: SearchSpace, draws: int, seed: int = 0, build: Callable[[Mapping[str, Any]], Config] | None = None
) -> list[Config]:
    """Build ``draws`` random configs; a broken one raises a UserError naming the draw and key."""
    rng = random.Random(seed)
    builder = build or space.build_config
    configs = []
    for i in range(draws):
        drawn = space.draw(rng)
        try:
            configs.append(builder(drawn))
        except ConfigError as exc:
            raise UserError(f"{space.path}: draw {i + 1} {drawn} gives an invalid config: {exc}") from None
    return configs
