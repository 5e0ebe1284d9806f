"""``load_paired``: build a data set once into the frame cache, then memory-map it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ckd_search.config import DataConfig
from ckd_search.data import cache
from ckd_search.data.base import PairedData
from ckd_search.data.built import BuiltData
from ckd_search.data.built import SplitArrays
from ckd_search.errors import UserError

log = logging.getLogger(__name__)

# Bump when a builder's output changes for the same parameters (part of every cache key).
# 2: the simulator's shot noise is drawn per sample (it was per chunk of 128 samples).
# 3: shot noise draws a Poisson count per pixel and step (it was at most one event per step).
DATA_VERSION = 3
SPLITS = ("train", "test")


@dataclass(frozen=True)
class _Plan:
    params: dict[str, Any]
    build: Callable[[], BuiltData]


def load_paired(cfg: DataConfig, image_size: int) -> PairedData:
    """The paired data set of ``cfg``, from the cache (built on first use).

    Args:
        cfg: data config: dataset, root, cache_dir, timesteps T, size S, limit, ...
        image_size: side I of the RGB images (the teacher's input size).

    Returns:
        PairedData whose splits hold frames [N, T, 2, S, S] float16, labels [N] int64, images
        [M, 3, I, I] uint8, image_labels [M], pair_index [N] (CPU tensors mapped copy-on-write
        from the cache files), and ``descriptors`` (classes, sample counts, events per sample,
        event density, sensor size, ..., ``cache_files`` and ``built``: whether this call built
        the cache rather than loading it).

    Raises:
        DataError: a real data set is missing, laid out wrongly or corrupt.
        UserError: bad arguments.
    """
    if int(image_size) < 1:
        raise UserError(f"image_size={image_size!r} must be >= 1")
    plan = _plan(cfg, int(image_size))
    paths = {s: cache.split_path(cfg.cache_dir, plan.params, s) for s in SPLITS}
    loaded = _try_load(paths, plan.params, warn=True)
    built = False  # whether this call built the files (an invalid cache is rebuilt, too)
    if loaded is None:
        with cache.build_lock(paths["train"]) as locked:
            # another process may have finished the build while we waited for the lock
            loaded = _try_load(paths, plan.params, warn=False)
            if loaded is None:
                if locked:  # every writer of these files holds this lock: leftover temps are orphans
                    cache.remove_stale_temps(paths.values())
                _build_and_write(plan, paths)
                built = True
                loaded = _try_load(paths, plan.params, warn=True)
    if loaded is None:  # pragma: no cover - a fresh write that does not read back is a bug
        raise RuntimeError(f"cache files {list(paths.values())} unreadable right after writing")
    splits, meta = loaded
    class_names = tuple(meta["class_names"])
    descriptors = describe(cfg.dataset, class_names, splits, meta, cfg, int(image_size))
    descriptors["cache_files"] = {s: str(p) for s, p in paths.items()}
    descriptors["built"] = built
    return PairedData(
        name=cfg.dataset,
        class_names=class_names,
        train=splits["train"].to_split(),
        test=splits["test"].to_split(),
        descriptors=descriptors,
    )


def describe(
    name: str,
    class_names: tuple[str, ...],
    splits: dict[str, SplitArrays],
    meta: dict[str, Any],
    cfg: DataConfig,
    image_size: int,
) -> dict[str, Any]:
    """Descriptors of a loaded data set (what the engine logs and ``data inspect`` prints)."""
    n_events = np.concatenate([splits[s].n_events for s in SPLITS])
    hw = np.concatenate([splits[s].sensor_hw for s in SPLITS])
    pixels = np.maximum(hw[:, 0] * hw[:, 1], 1)
    info = meta.get("info", {})
    return {
        "name": name,
        "classes": len(class_names),
        "train_samples": len(splits["train"].labels),
        "test_samples": len(splits["test"].labels),
        "timesteps": cfg.timesteps,
        "size": cfg.size,
        "image_size": image_size,
        "mean_events_per_sample": float(n_events.mean()) if n_events.size else 0.0,
        "event_density": float((n_events / pixels).mean()) if n_events.size else 0.0,
        # (W, H) like tonic's sensor_size; the largest window when recordings differ
        "sensor_size": [int(hw[:, 1].max()), int(hw[:, 0].max())] if len(hw) else [0, 0],
        "events_per_sample": {s: _stats(splits[s].n_events) for s in SPLITS},
        "class_counts": {
            s: np.bincount(splits[s].labels, minlength=len(class_names)).tolist() for s in SPLITS
        },
        "pairing": cfg.pairing,
        "synthetic_events": bool(info.get("synthetic_events", False)),
        "synthetic_images": bool(info.get("synthetic_images", False)),
        "source": info.get("source", ""),
        "build_seconds": meta.get("build_seconds"),
    }


def _stats(values: np.ndarray) -> dict[str, float]:
    if not values.size:
        return {"mean": 0.0, "std": 0.0, "min": 0.0, "median": 0.0, "max": 0.0}
    v = values.astype(np.float64)
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(v.min()),
        "median": float(np.median(v)),
        "max": float(v.max()),
    }


def _plan(cfg: DataConfig, image_size: int) -> _Plan:
    """Build parameters (the cache key) and the builder of ``cfg.dataset``."""
    params: dict[str, Any] = {
        "dataset": cfg.dataset,
        "timesteps": cfg.timesteps,
        "size": cfg.size,
        "image_size": image_size,
        "limit": cfg.limit,
        "data_version": DATA_VERSION,
    }
    if cfg.dataset == "digits_dvs":
        from ckd_search.data import digits

        params.update(digits.build_params(cfg))
        return _Plan(params, lambda: digits.build_digits_dvs(cfg, image_size))
    if cfg.dataset == "shapes_dvs":
        from ckd_search.data import shapes

        params.update(shapes.build_params(cfg))
        return _Plan(params, lambda: shapes.build_shapes_dvs(cfg, image_size))
    if cfg.dataset == "ncaltech101":
        from ckd_search.data import ncaltech101

        layout = ncaltech101.find_layout(cfg.root, cfg.include_background)
        params.update(ncaltech101.build_params(cfg, layout))
        return _Plan(params, lambda: ncaltech101.build_ncaltech101(cfg, image_size, layout))
    if cfg.dataset == "cepdvs":
        from ckd_search.data import cepdvs

        cep_layout = cepdvs.find_layout(cfg.root)
        params.update(cepdvs.build_params(cfg, cep_layout))
        return _Plan(params, lambda: cepdvs.build_cepdvs(cfg, image_size, cep_layout))
    raise UserError(f"data.dataset={cfg.dataset!r} is not a known data set")


def _try_load(
    paths: dict[str, Path], params: dict[str, Any], *, warn: bool
) -> tuple[dict[str, SplitArrays], dict[str, Any]] | None:
    splits: dict[str, SplitArrays] = {}
    meta: dict[str, Any] = {}
    for split, path in paths.items():
        try:
            splits[split], meta = cache.read_split(path, params)
        except FileNotFoundError:
            return None
        except cache.CacheInvalid as err:
            if warn:
                log.warning("%s: unusable cache (%s); rebuilding", path, err)
            return None
    return splits, meta


def _build_and_write(plan: _Plan, paths: dict[str, Path]) -> None:
    log.info(
        "building %s cache (T=%s, S=%s, I=%s)",
        plan.params["dataset"],
        plan.params["timesteps"],
        plan.params["size"],
        plan.params["image_size"],
    )
    start = time.perf_counter()
    built = plan.build()
    seconds = round(time.perf_counter() - start, 3)
    meta = {"class_names": list(built.class_names), "info": built.info, "build_seconds": seconds}
    for split in SPLITS:
        cache.write_split(paths[split], getattr(built, split), plan.params, meta)
    log.info(
        "built %s in %.1f s: %d train / %d test -> %s",
        built.name,
        seconds,
        len(built.train.labels),
        len(built.test.labels),
        paths["train"].parent,
    )
