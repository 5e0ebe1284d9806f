"""``ckd-search train``: one CKD run without Ray; writes the resolved config, metrics and checkpoints."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from ckd_search.cli import parse_overrides
from ckd_search.config import Config
from ckd_search.config import check_local_paths
from ckd_search.config import config_differences
from ckd_search.errors import TrialFailure
from ckd_search.errors import UserError
from ckd_search.storage import atomic_write_text
from ckd_search.storage import output_dir

log = logging.getLogger(__name__)


def run_train(args: argparse.Namespace) -> int:
    if args.resume and not args.out:
        raise UserError("--resume continues the run in --out DIR: give --out")
    out = Path(args.out or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}")
    saved = out / "config.yaml"
    if args.resume and not saved.is_file():
        raise UserError(f"--resume: {saved} does not exist (nothing to resume)")
    old = Config.from_yaml(saved) if args.resume else None
    sets = parse_overrides(args.set)
    if old is None or args.config:
        cfg = Config.from_yaml(args.config, sets) if args.config else Config.from_dict(sets)
    else:  # `--out DIR --resume` alone continues the run as it was configured (nanoGPT's init_from=resume);
        # `--set` then changes the saved config (e.g. `--set run.device=cpu` on a machine without CUDA)
        cfg = Config.from_yaml(saved, sets) if sets else old
    check_local_paths(cfg)
    if old is not None:
        _check_resumable(old, cfg, saved, device_from_saved=not args.config and "run.device" not in sets)
    if old is None and any((out / name).exists() for name in RUN_FILES):
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    return _train_in(args, cfg, out)


#: what a run writes into its --out folder: one of them there means the folder holds a run
RUN_FILES = ("config.yaml", "metrics.json", "result.json", "checkpoint")


def _check_resumable(old: Config, cfg: Config, saved: Path, *, device_from_saved: bool) -> None:
    """Refuse a resume whose config computes something else than the saved one.

    Placement (``run.device``, ``run.threads``: where the run computes, not what) may change; the
    new values are used and saved. A saved device this machine lacks is named in one line.
    """
    from ckd_search.engine import _what_is_computed
    from ckd_search.engine import resolve_device

    before, after = _what_is_computed(old.to_dict()), _what_is_computed(cfg.to_dict())
    if before != after:
        changed = config_differences(before, after)
        raise UserError(
            f"--resume: the config differs from {saved} ({changed}); resume needs the same config "
            "(only run.device and run.threads may change)"
        )
    if device_from_saved:
        try:
            resolve_device(cfg.run.device)
        except UserError as err:
            raise UserError(
                f"--resume: {saved} has {err}; to continue the run on this machine, add --set run.device=cpu"
            ) from None


def _train_in(args: argparse.Namespace, cfg: Config, out: Path) -> int:
    """Train into ``out``; a failure before the run has anything to keep (no finished epoch, no
    checkpoint) removes what this command wrote there and the folders it created, never other files."""
    created = _missing_folders(out)  # the folders output_dir will create, deepest first
    existed = {name for name in RUN_FILES if (out / name).exists()}
    saved = out / "config.yaml"
    saved_text = saved.read_text() if saved.is_file() else None  # a resume may rewrite its placement
    progress = _Progress()
    try:
        output_dir(out)
        return _train(args, cfg, out, progress)
    except BaseException as err:
        from ckd_search.checkpoint import has_checkpoint

        if not (progress.epochs or has_checkpoint(out / "checkpoint")):
            _remove_written(out, existed, created)
            if saved_text is not None and saved.is_file() and saved.read_text() != saved_text:
                atomic_write_text(saved, saved_text)
        if isinstance(err, TrialFailure):
            kept = f"{out} keeps the epochs before it" if progress.epochs else f"no run kept in {out}"
            raise UserError(f"the run stopped: {err}; {kept}") from None
        raise


class _Progress:
    """Epochs finished and checkpoints written by this command."""

    def __init__(self) -> None:
        self.epochs = 0
        self.checkpoints = 0


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first."""
    missing: list[Path] = []
    folder = path.absolute()
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_written(out: Path, existed: set[str], created: list[Path]) -> None:
    for name in RUN_FILES:
        if name in existed or not out.is_dir():  # not a folder (a file there): nothing written in it
            continue
        path = out / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for folder in created:  # deepest first; one that holds anything else stays
        try:
            folder.rmdir()
        except OSError:
            break


def _train(args: argparse.Namespace, cfg: Config, out: Path, progress: _Progress) -> int:
    atomic_write_text(out / "config.yaml", cfg.to_yaml())

    from ckd_search.engine import fit

    # a resumed run keeps the epochs metrics.json already holds (replayed ones are replaced)
    history = _saved_history(out / "metrics.json") if args.resume else []

    def on_epoch_end(metrics: dict[str, float], ckpt: Path | None) -> None:
        progress.checkpoints += ckpt is not None
        history[:] = [row for row in history if row.get("epoch", 0) < metrics["epoch"]] + [metrics]
        atomic_write_text(out / "metrics.json", json.dumps(history, indent=1))
        progress.epochs += 1

    result = fit(cfg, on_epoch_end, checkpoint_dir=out / "checkpoint", resume=args.resume)
    summary = {
        "best_test_acc": result.best_test_acc,
        "final_test_acc": result.final_test_acc,
        "epochs_run": result.epochs_run,
        "teacher_test_acc": result.teacher_test_acc,
    }
    atomic_write_text(out / "metrics.json", json.dumps(result.metrics, indent=1))
    atomic_write_text(out / "result.json", json.dumps(summary, indent=1))
    print(
        f"best test top-1 {result.best_test_acc:.4f}, final {result.final_test_acc:.4f} "
        f"after {result.epochs_run} epochs; teacher test top-1 "
        f"{'n/a' if result.teacher_test_acc is None else f'{result.teacher_test_acc:.4f}'}"
    )
    wrote = "config.yaml, metrics.json, result.json" + (", checkpoint/" if progress.checkpoints else "")
    print(f"wrote {out}/{wrote}")
    return 0


def _saved_history(path: Path) -> list[dict[str, float]]:
    """The per-epoch rows of an earlier ``metrics.json`` (none if missing or unreadable)."""
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
