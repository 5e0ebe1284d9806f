"""Ray Tune function trainable: one CKD training run (``engine.fit``) per trial.

The trial config is flat (fixed + sampled dotted keys) and becomes a :class:`Config`. Every epoch is
reported with ``ray.tune.report(metrics, checkpoint=...)``: the engine's metrics plus
``budget_epochs`` (epochs this config trains for; how the searcher tells a pruned trial from a
finished one). A retried or restored trial copies ``ray.tune.get_checkpoint()`` into a fresh folder
and calls ``fit(resume=True)``, which continues exactly from it. Data and teacher logits come from
the driver through ``tune.with_parameters`` (object store), never from a shared file system.

A checkpoint is verified (SHA-256) before ``fit`` sees it: a corrupt or truncated one is logged and
the trial falls back to the newest intact older checkpoint of the same trial (Tune keeps two), or
starts again from epoch 1; it never dies on, or retries forever with, a damaged file. A
:class:`ckd_search.errors.TrialFailure` (non-finite loss) propagates: the driver ends that trial
without retrying it (:mod:`ckd_search.search.faults`). The test-only fault-injection hook
(``CKD_SEARCH_FAULT_INJECT``, see :mod:`ckd_search.search.faults`) runs after each epoch, before the
epoch is reported.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ckd_search.checkpoint import verify_checkpoint
from ckd_search.config import Config
from ckd_search.search.faults import checkpoint_name
from ckd_search.search.faults import error_line
from ckd_search.search.faults import inject
from ckd_search.search.faults import sibling_checkpoints
from ckd_search.search.faults import trial_index
from ckd_search.search.outcome import BUDGET_KEY
from ckd_search.search.outcome import budget_epochs
from ckd_search.search.preparation import PreparedRegistry

log = logging.getLogger(__name__)
RELPATH_KEY = "ckd_relpath"
READ_RETRY_WAITS_S = (2.0, 8.0)  # seconds before the 2nd and 3rd read of a checkpoint


def train_ckd(config: dict[str, Any], prepared: PreparedRegistry) -> None:
    """Run ``engine.fit`` for one trial, reporting and checkpointing every epoch."""
    from ray import tune

    from ckd_search.engine import fit

    cfg = Config.from_dict(config)
    resources = tune.get_context().get_trial_resources().required_resources
    has_gpu = configure_process(
        float(resources.get("CPU", 1.0)), float(resources.get("GPU", 0.0)), cfg.run.device
    )
    if not has_gpu and cfg.run.device == "auto":
        cfg = cfg.replace(**{"run.device": "cpu"})  # no GPU reserved: do not touch one that is visible
    data = prepared.get(cfg)
    workdir = Path(tempfile.mkdtemp(prefix="ckd-trial-"))
    ckpt_root = workdir / "checkpoint"
    ckpt_root.mkdir()
    resume = restore_checkpoint(tune.get_checkpoint(), ckpt_root)
    budget = float(budget_epochs(cfg))
    context = tune.get_context()
    experiment, trial_id = context.get_experiment_name(), context.get_trial_id()
    index = trial_index(context.get_trial_name())

    def on_epoch_end(metrics: dict[str, float], ckpt_dir: Path | None) -> None:
        inject(experiment, trial_id, index, int(metrics.get("epoch", 0)))
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


def configure_process(cpus: float, gpus: float, device: str = "auto") -> bool:
    """Threads, compile caches and GPU memory share of this trial; True if a GPU is usable.

    A trial that holds a GPU share CUDA cannot see (logical GPUs, a broken driver) says so when its
    ``run.device`` is ``auto``: it falls back to the CPU.

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
    if gpus <= 0:
        return False
    if not ray.get_gpu_ids() or not torch.cuda.is_available():
        # Logical GPUs (tests, `ray start --num-gpus N` on a CPU node) or a node whose CUDA is broken:
        # say so, since such a trial holds its GPU share for a run many times slower.
        if device != "auto":
            return False
        log.warning(
            "this trial holds %g GPU (ids %s) but torch sees no CUDA device (CUDA_VISIBLE_DEVICES=%r): "
            "it trains on the CPU; set run.device=cuda to make that an error",
            gpus,
            ray.get_gpu_ids(),
            os.environ.get("CUDA_VISIBLE_DEVICES"),
        )
        return False
    if gpus < 1:
        torch.cuda.set_per_process_memory_fraction(gpus, device=0)
    return True


def restore_checkpoint(checkpoint: Any, ckpt_root: Path) -> bool:
    """Copy a Tune checkpoint to where ``fit`` wrote it; True when there is one to resume from.

    A damaged checkpoint (SHA-256 mismatch, truncated, unreadable) is replaced by the newest intact
    older one of the trial; with none, the trial starts again (False).
    """
    if checkpoint is None:
        return False
    for candidate in _candidates(checkpoint):
        try:
            relpath = (candidate.get_metadata() or {}).get(RELPATH_KEY, ".")
            target = (ckpt_root / relpath).resolve()
            _copy_checkpoint(candidate, target, ckpt_root)
            problem = verify_checkpoint(target)
        except Exception as err:  # noqa: BLE001 - an unreadable checkpoint is a damaged one
            problem = f"{candidate.path}: checkpoint cannot be read ({error_line(err)})"
        if problem is None:
            if candidate is not checkpoint:
                log.warning("resuming from the older checkpoint %s instead", candidate.path)
            log.info("resuming from checkpoint %s", candidate.path)
            return True
        log.warning("damaged trial checkpoint, not used: %s", problem)
    _clear(ckpt_root)
    log.warning("no intact checkpoint left for this trial; it starts again from epoch 1")
    return False


def _copy_checkpoint(checkpoint: Any, target: Path, ckpt_root: Path) -> None:
    """Copy ``checkpoint`` to ``target``, again after each of :data:`READ_RETRY_WAITS_S` on a read
    error other than a missing file: a storage hiccup (S3, NFS) must not pass for a damaged
    checkpoint and cost the trial its progress. The last error is raised (then it counts as damaged).
    """
    for wait_s in (*READ_RETRY_WAITS_S, None):
        _clear(ckpt_root)
        try:
            with checkpoint.as_directory() as folder:
                shutil.copytree(folder, target, dirs_exist_ok=True)
            return
        except OSError as err:
            if wait_s is None or isinstance(err, FileNotFoundError | IsADirectoryError | NotADirectoryError):
                raise
            log.warning(
                "reading checkpoint %s failed (%s); again in %g s", checkpoint.path, error_line(err), wait_s
            )
            time.sleep(wait_s)


def _candidates(checkpoint: Any) -> Iterator[Any]:
    """``checkpoint``, then the older ones, listed only if it is damaged."""
    yield checkpoint
    yield from older_checkpoints(checkpoint)


def older_checkpoints(checkpoint: Any) -> list[Any]:
    """The trial's other ``checkpoint_NNNNNN`` folders older than ``checkpoint``, newest first."""
    try:
        siblings = sibling_checkpoints(checkpoint)
    except Exception:  # noqa: BLE001 - no listing (e.g. a remote store without it): nothing older
        return []
    name = checkpoint_name(checkpoint)
    return [c for c in reversed(siblings) if checkpoint_name(c) < name]


def _clear(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _relpath(ckpt_dir: Path, root: Path) -> str:
    try:
        return str(ckpt_dir.resolve().relative_to(root.resolve()))
    except ValueError:
        return "."


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
