"""Ray Tune function trainable: one CKD training run (``engine.fit``) per trial.

The trial config is flat (fixed + sampled dotted keys) and becomes a :class:`Config`. Every epoch is
reported with ``ray.tune.report(metrics, checkpoint=...)``: the engine's metrics plus
``budget_epochs`` (epochs this config trains for; how the searcher tells a pruned trial from a
finished one). A retried or restored trial copies ``ray.tune.get_checkpoint()`` into a fresh folder
and calls ``fit(resume=True)``, which continues exactly from it. Data and teacher logits come from
the driver through ``tune.with_parameters`` (object store), never from a shared file system.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ckd_search.config import Config
from ckd_search.search.outcome import BUDGET_KEY
from ckd_search.search.outcome import budget_epochs
from ckd_search.search.preparation import PreparedRegistry

log = logging.getLogger(__name__)
RELPATH_KEY = "ckd_relpath"


def train_ckd(config: dict[str, Any], prepared: PreparedRegistry) -> None:
    """Run ``engine.fit`` for one trial, reporting and checkpointing every epoch."""
    from ray import tune

    from ckd_search.engine import fit

    cfg = Config.from_dict(config)
    resources = tune.get_context().get_trial_resources().required_resources
    has_gpu = configure_process(float(resources.get("CPU", 1.0)), float(resources.get("GPU", 0.0)))
    if not has_gpu and cfg.run.device == "auto":
        cfg = cfg.replace(**{"run.device": "cpu"})  # no GPU reserved: do not touch one that is visible
    data = prepared.get(cfg)
    workdir = Path(tempfile.mkdtemp(prefix="ckd-trial-"))
    ckpt_root = workdir / "checkpoint"
    ckpt_root.mkdir()
    resume = restore_checkpoint(tune.get_checkpoint(), ckpt_root)
    budget = float(budget_epochs(cfg))

    def on_epoch_end(metrics: dict[str, float], ckpt_dir: Path | None) -> None:
        report = {k: float(v) for k, v in metrics.items() if _is_number(v)}
        report[BUDGET_KEY] = budget
        checkpoint = None
        if ckpt_dir is not None:
            checkpoint = tune.Checkpoint.from_directory(str(ckpt_dir))
            checkpoint.set_metadata({RELPATH_KEY: _relpath(Path(ckpt_dir), ckpt_root)})
        tune.report(report, checkpoint=checkpoint)

    try:
        fit(cfg, on_epoch_end, prepared=data, checkpoint_dir=ckpt_root, resume=resume)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def configure_process(cpus: float, gpus: float) -> bool:
    """Threads, compile caches and GPU memory share of this trial; True if a GPU is usable.

    Ray sets ``OMP_NUM_THREADS`` to the trial's CPUs (1 for fractions, pitfall 9), so torch's
    thread count is set explicitly. ``torch.cuda.set_per_process_memory_fraction`` caps a
    fractional-GPU trial's share of the card (Ray's fractions are bookkeeping only, pitfall 10).
    """
    import ray
    import torch

    for name in ("ray.train", "ray.tune"):  # "Checkpoint successfully created" every epoch
        logging.getLogger(name).setLevel(logging.WARNING)
    cache = Path(tempfile.gettempdir()) / f"ckd_search-cache-{os.getuid()}"
    os.environ.setdefault("TRITON_CACHE_DIR", str(cache / "triton"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache / "inductor"))
    torch.set_num_threads(max(1, int(math.floor(cpus))))
    if gpus <= 0 or not ray.get_gpu_ids() or not torch.cuda.is_available():
        return False
    if gpus < 1:
        torch.cuda.set_per_process_memory_fraction(gpus, device=0)
    return True


def restore_checkpoint(checkpoint: Any, ckpt_root: Path) -> bool:
    """Copy a Tune checkpoint to where ``fit`` wrote it; True when there is one to resume from."""
    if checkpoint is None:
        return False
    relpath = (checkpoint.get_metadata() or {}).get(RELPATH_KEY, ".")
    target = (ckpt_root / relpath).resolve()
    with checkpoint.as_directory() as folder:
        shutil.copytree(folder, target, dirs_exist_ok=True)
    log.info("resuming from checkpoint %s", checkpoint.path)
    return True


def _relpath(ckpt_dir: Path, root: Path) -> str:
    try:
        return str(ckpt_dir.resolve().relative_to(root.resolve()))
    except ValueError:
        return "."


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
