"""Wall time of Digits-DVS epochs on the CPU with the default config (what a CPU trial costs).

``python bench/cpu_epoch.py [--epochs N] [--set KEY=VALUE ...] [--smoke]``. Uses the real data
path: ``load_paired`` builds the embedded set into a temporary cache, ``prepare`` fine-tunes the
teacher and caches its logits, then ``Trainer.train_epoch`` and ``Trainer.evaluate`` run as in
``fit``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Sequence

import torch

from ckd_search.argtypes import OneLineParser
from ckd_search.argtypes import positive_int
from ckd_search.config import Config
from ckd_search.perf.timing import cell_number
from ckd_search.perf.timing import fmt
from ckd_search.perf.timing import format_table
from ckd_search.storage import given_or_temp_dir

log = logging.getLogger(__name__)

COLUMNS = ("epoch", "train s", "steps", "pairs", "pairs/s", "ms/step", "eval s", "train loss", "test acc")
# A small run for CI: the tiny shapes of the engine tests, one teacher epoch.
SMOKE = {
    "data.limit": 96,
    "data.size": 16,
    "data.timesteps": 3,
    "model.width": 0.0625,
    "teacher.epochs": 1,
    "optim.batch_size": 32,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="cpu_epoch", description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=positive_int, default=1, help="epochs to time (default 1)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--cache-dir", default=None, help="data/teacher cache (default: a fresh temp dir)")
    p.add_argument(
        "--set",
        nargs="*",
        metavar="KEY=VALUE",
        default=None,
        help="config overrides on top of Config() (dotted keys)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny subset and model (CI)")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace, cache_dir: str) -> Config:
    from ckd_search.cli import parse_overrides

    values: dict[str, object] = dict(SMOKE) if args.smoke else {}
    values.update(parse_overrides(args.set))
    values.update({"data.cache_dir": cache_dir, "run.device": "cpu"})
    if args.epochs > 1:
        values.setdefault("run.epochs", max(args.epochs, Config().run.epochs))
    return Config.from_dict(values)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with given_or_temp_dir(args.cache_dir, "ckd_cpu_epoch_") as cache_dir:
        return _run(args, cache_dir)


def _run(args: argparse.Namespace, cache_dir: str) -> int:
    from ckd_search.data import load_paired
    from ckd_search.engine import Trainer
    from ckd_search.engine import seed_everything
    from ckd_search.prepare import prepare

    cfg = build_config(args, cache_dir)
    device = torch.device("cpu")
    seed_everything(cfg.run.seed)

    start = time.perf_counter()
    load_paired(cfg.data, image_size=cfg.teacher.input_size)
    build_s = time.perf_counter() - start  # simulator + frame cache (0 if --cache-dir holds it)
    start = time.perf_counter()
    load_paired(cfg.data, image_size=cfg.teacher.input_size)
    cached_s = time.perf_counter() - start
    start = time.perf_counter()
    prepared = prepare(cfg)
    prepare_s = time.perf_counter() - start
    teacher_s = max(0.0, prepare_s - cached_s)  # prepare = cached data load + teacher stage

    start = time.perf_counter()
    trainer = Trainer(cfg, prepared, device)
    setup_s = time.perf_counter() - start
    rows = []
    for epoch in range(args.epochs):
        trainer.epoch = epoch
        start = time.perf_counter()
        metrics = trainer.train_epoch()
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        test_acc = trainer.evaluate()["test_acc"]
        eval_s = time.perf_counter() - start
        steps = len(trainer.train_source)
        pairs = steps * cfg.optim.batch_size
        rows.append(
            [
                str(epoch + 1),
                fmt(train_s, 2),
                str(steps),
                str(pairs),
                fmt(pairs / train_s),
                fmt(train_s * 1e3 / max(1, steps)),
                fmt(eval_s, 2),
                fmt(metrics["train_loss"], 4),
                fmt(test_acc, 4),
            ]
        )

    data = prepared.data
    d, m = cfg.data, cfg.model
    print(
        f"# CPU epoch ({d.dataset}{', smoke' if args.smoke else ''}): {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}"
    )
    print(
        f"config: T={d.timesteps}, {d.size}x{d.size}, width {m.width:g}, batch {cfg.optim.batch_size}, "
        f"teacher {cfg.teacher.arch} {cfg.teacher.epochs} epochs at {cfg.teacher.input_size}px; "
        f"{len(data.train)} train / {len(data.test)} test recordings"
    )
    print(f"data build s = {build_s:.2f} (simulator + frame cache); cached load s = {cached_s:.3f}")
    print(f"teacher prep s = {teacher_s:.2f} (fine-tune + logits); trainer setup s = {setup_s:.2f}")
    print()
    print(format_table(COLUMNS, rows))
    print()
    # the first epoch pays one-off costs (allocator, thread pool): with more, summarise the later ones
    steady = rows[1:] or rows
    seconds = statistics.median(cell_number(r[1]) for r in steady)
    rate = statistics.median(cell_number(r[4]) for r in steady)
    which = "epoch 1" if len(rows) == 1 else f"median of epochs 2-{len(rows)}"
    print(f"epoch seconds = {seconds:.2f}; pairs/s = {fmt(rate)} ({which})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
