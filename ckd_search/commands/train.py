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
from ckd_search.errors import UserError
from ckd_search.storage import atomic_write_text
from ckd_search.storage import output_dir

log = logging.getLogger(__name__)


def load_config(config_path: str | None, overrides: list[str] | None) -> Config:
    sets = parse_overrides(overrides)
    return Config.from_yaml(config_path, sets) if config_path else Config.from_dict(sets)


def run_train(args: argparse.Namespace) -> int:
    if args.resume and not args.out:
        raise UserError("--resume continues the run in --out DIR: give --out")
    out = Path(args.out or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}")
    saved = out / "config.yaml"
    if args.resume and not saved.is_file():
        raise UserError(f"--resume: {saved} does not exist (nothing to resume)")
    old = Config.from_yaml(saved) if args.resume else None
    # `--out DIR --resume` alone continues the run as it was configured (nanoGPT's init_from=resume)
    cfg = load_config(args.config, args.set) if old is None or args.config or args.set else old
    check_local_paths(cfg)
    if old is not None and old != cfg:
        changed = config_differences(old.to_dict(), cfg.to_dict())
        raise UserError(
            f"--resume: the config differs from {saved} ({changed}); resume needs the same config"
        )
    if old is None and (out / "checkpoint").exists():
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    created = not out.exists()
    output_dir(out)
    try:
        return _train(args, cfg, out)
    except UserError:
        if created and not (out / "checkpoint").exists():  # refused before it trained: leave nothing
            shutil.rmtree(out, ignore_errors=True)
        raise


def _train(args: argparse.Namespace, cfg: Config, out: Path) -> int:
    atomic_write_text(out / "config.yaml", cfg.to_yaml())

    from ckd_search.engine import fit

    # a resumed run keeps the epochs metrics.json already holds (replayed ones are replaced)
    history = _saved_history(out / "metrics.json") if args.resume else []

    def on_epoch_end(metrics: dict[str, float], _ckpt: Path | None) -> None:
        history[:] = [row for row in history if row.get("epoch", 0) < metrics["epoch"]] + [metrics]
        atomic_write_text(out / "metrics.json", json.dumps(history, indent=1))

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
    print(f"wrote {out}/config.yaml, metrics.json, result.json, checkpoint/")
    return 0


def _saved_history(path: Path) -> list[dict[str, float]]:
    """The per-epoch rows of an earlier ``metrics.json`` (none if missing or unreadable)."""
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
