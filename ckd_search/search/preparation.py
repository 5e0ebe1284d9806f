"""Data and teacher logits, prepared once on the driver per distinct ``prepare_key`` of a space.

``engine.prepare`` loads the data set and trains (or loads) the teacher; it depends on a few config
values (``engine.prepare_key``: data.*, teacher.*, and whether the run distils). The driver finds
which searched parameters change that key (by probing the key, so the engine stays the only judge),
prepares every distinct setting once, and puts each into the Ray object store. Trials receive a
:class:`PreparedRegistry` through ``tune.with_parameters`` and fetch only their own object: workers
need no shared file system and no data cache.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ckd_search.config import Config
from ckd_search.errors import ConfigError
from ckd_search.errors import UserError
from ckd_search.search.space import Param
from ckd_search.search.space import Resources
from ckd_search.search.space import SearchSpace

log = logging.getLogger(__name__)
MAX_VARIANTS = 32
PROBE_DRAWS = 12


class PreparedRegistry:
    """``prepare_key -> ObjectRef`` of a ``Prepared``; a trial fetches only its own entry."""

    def __init__(self, refs: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> None:
        self.refs = dict(refs)
        self.labels = dict(labels or {})

    def get(self, cfg: Config) -> Any:
        """The prepared data of ``cfg``; prepared here (with a warning) if the driver missed it."""
        import ray

        from ckd_search.engine import prepare
        from ckd_search.engine import prepare_key
        from ckd_search.search.shared_data import as_tensors

        key = prepare_key(cfg)
        ref = self.refs.get(key)
        if ref is None:
            log.warning("no driver-prepared data for key %s; preparing in this trial", key)
            return prepare(cfg)
        return as_tensors(ray.get(ref))  # the node's one copy in shared memory, not a copy per trial


def prepare_sensitive_params(
    space: SearchSpace, resources: Resources | None = None, key_fn: Callable[[Config], str] | None = None
) -> list[Param]:
    """The searched parameters whose value changes ``prepare_key`` (probed over random draws)."""
    key_of = key_fn or _engine_prepare_key()
    rng = random.Random(0)
    sensitive: list[Param] = []
    bases = [space.draw(rng) for _ in range(PROBE_DRAWS)]
    for p in space.params:
        alternatives = p.probe_values() + [p.draw(rng) for _ in range(2)]
        if _changes_key(space, p, bases, alternatives, resources, key_of):
            if not p.discrete:
                raise UserError(
                    f"{space.path}: space.{p.key} changes the prepared data/teacher (engine.prepare_key); "
                    "make it a choice so the driver can prepare each value once"
                )
            sensitive.append(p)
    return sensitive


def _changes_key(
    space: SearchSpace,
    p: Param,
    bases: list[dict[str, Any]],
    alternatives: list[Any],
    resources: Resources | None,
    key_fn: Callable[[Config], str],
) -> bool:
    for base in bases:
        if p.key not in base:
            continue
        keys = set()
        for value in alternatives:
            try:
                keys.add(key_fn(space.build_config({**base, p.key: value}, resources)))
            except ConfigError:
                continue
        if len(keys) > 1:
            return True
    return False


def prepare_variants(
    space: SearchSpace, resources: Resources | None = None, key_fn: Callable[[Config], str] | None = None
) -> dict[str, tuple[Config, str]]:
    """``prepare_key -> (config, label)`` for every distinct preparation the space can ask for."""
    key_of = key_fn or _engine_prepare_key()
    sensitive = prepare_sensitive_params(space, resources, key_of)
    base: dict[str, Any] = {}
    for p in space.params:
        if p.applies(base):
            base[p.key] = p.probe_values()[0]
    variants: dict[str, tuple[Config, str]] = {}
    for combo in _combinations(sensitive, base):
        drawn = dict(base)
        for p in sensitive:
            drawn.pop(p.key, None)
        drawn.update(combo)
        kept: dict[str, Any] = {}
        for p in space.params:
            if p.key in drawn and p.applies(kept):
                kept[p.key] = drawn[p.key]
        drawn = kept
        try:
            cfg = space.build_config(drawn, resources)
        except ConfigError:
            continue
        key = key_of(cfg)
        label = ", ".join(f"{k}={v}" for k, v in combo.items()) or "all trials"
        variants.setdefault(key, (cfg, label))
        if len(variants) > MAX_VARIANTS:
            raise UserError(
                f"{space.path}: more than {MAX_VARIANTS} distinct data/teacher preparations "
                f"({', '.join(p.key for p in sensitive)}); search fewer data.*/teacher.* values"
            )
    return variants


def _engine_prepare_key() -> Callable[[Config], str]:
    from ckd_search.engine import prepare_key

    return prepare_key


def _combinations(sensitive: list[Param], base: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every assignment of the sensitive parameters (absent where a condition fails)."""
    options = [list(p.values) for p in sensitive]
    for values in itertools.product(*options):
        combo: dict[str, Any] = {}
        context = dict(base)
        for p, value in zip(sensitive, values):
            context.pop(p.key, None)
            if p.applies({**context, **combo}):
                combo[p.key] = value
        yield combo


def prepare_all(
    space: SearchSpace, resources: Resources | None = None, run_dir: Path | None = None
) -> PreparedRegistry:
    """Prepare every variant on the driver and ``ray.put`` each (Ray must be initialised).

    With ``run_dir``, the data-set descriptors of the first variant (classes, events per sample,
    RGB<->DVS gap) are stored there once as ``descriptors.json`` for ``ckd-search analyze``.
    """
    import ray

    from ckd_search.analysis.descriptors import FILE_NAME
    from ckd_search.analysis.descriptors import dataset_descriptors
    from ckd_search.analysis.descriptors import write_descriptors
    from ckd_search.engine import prepare
    from ckd_search.search.shared_data import as_arrays

    refs: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for key, (cfg, label) in prepare_variants(space, resources).items():
        start = time.monotonic()
        prepared = prepare(cfg)
        refs[key] = ray.put(as_arrays(prepared))
        labels[key] = label
        log.info("prepared data and teacher for %s (key %s) in %.1f s", label, key, time.monotonic() - start)
        check_batch_fits(space, len(prepared.data.train), label)
        if run_dir is not None and not (run_dir / FILE_NAME).is_file():
            start = time.monotonic()
            write_descriptors(run_dir, dataset_descriptors(prepared, cfg))
            log.info("data-set descriptors (RGB<->DVS gap) in %.1f s", time.monotonic() - start)
    return PreparedRegistry(refs, labels)


def check_batch_fits(space: SearchSpace, train_samples: int, label: str = "all trials") -> None:
    """Refuse a space whose every batch size exceeds the train split (each trial would fail on
    its first step); warn when only some of the searched batch sizes do."""
    key = "optim.batch_size"
    sizes = space.possible_values(key)
    too_large = sorted(int(v) for v in sizes if int(v) > train_samples)
    if not too_large:
        return
    split = f"the train split{'' if label == 'all trials' else ' of ' + label} ({train_samples} samples)"
    if len(too_large) == len(sizes):
        raise UserError(f"{key}={min(too_large)} is larger than {split}; every trial would fail")
    log.warning("trials with %s > %d will fail: larger than %s", key, train_samples, split)
