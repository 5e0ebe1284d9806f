"""Does the bf16 path train like fp32? Loss and accuracy curves of the same run in both precisions.

``python bench/precision.py [--epochs N] [--set KEY=VALUE ...] [--device cuda] [--smoke]``. Trains one
config (same seed, same data, same teacher) with ``run.precision=fp32`` and ``run.precision=bf16``,
plus fp32 with the next ``run.seed`` as the noise floor: how far the curves of a rerun with
another seed drift (student init, batch order, augmentation, the teacher's fine-tune) without any
change of precision. Prints the per-epoch train loss and test accuracy side by side and, for each
run against fp32, the largest relative train-loss gap and the final/best accuracy differences.

bf16 is spikingjelly's PrecisionConfig (bf16 autocast, fp32 neuron state). It runs on a CPU too
(the engine keeps the neuron state fp32 there itself, see ``Trainer._setup_bf16``), so the check
is real on any machine; a GPU run adds cuDNN's and Triton's own bf16 kernels.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import torch

from ckd_search.argtypes import OneLineParser
from ckd_search.argtypes import positive_int
from ckd_search.config import Config
from ckd_search.perf.cpu_epoch import SMOKE  # the same tiny run as the CPU epoch bench
from ckd_search.perf.timing import fmt
from ckd_search.perf.timing import format_table
from ckd_search.storage import given_or_temp_dir

REFERENCE = "fp32"


def runs(base: Config, noise_floor: bool = True) -> dict[str, dict[str, Any]]:
    """The runs to compare, by name: the fp32 reference, bf16, and fp32 with the next seed."""
    out: dict[str, dict[str, Any]] = {REFERENCE: {"run.precision": "fp32"}, "bf16": {"run.precision": "bf16"}}
    if noise_floor:
        seed = base.run.seed + 1
        out[f"fp32 seed {seed}"] = {"run.precision": "fp32", "run.seed": seed}
    return out


def train_curves(base: Config, plan: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """Per-epoch metrics of each run in ``plan`` (name -> config overrides). Runs share the prepared
    data and teacher where their config allows: the precision runs do; the next seed fine-tunes its
    own teacher (its seed is part of the teacher's key), as a rerun with another seed would."""
    from ckd_search.engine import fit
    from ckd_search.prepare import Prepared
    from ckd_search.prepare import prepare
    from ckd_search.prepare import prepare_key

    prepared: dict[str, Prepared] = {}
    curves: dict[str, list[dict[str, float]]] = {}
    for name, overrides in plan.items():
        cfg = base.replace(**overrides)
        key = prepare_key(cfg)
        if key not in prepared:
            prepared[key] = prepare(cfg)

        def progress(metrics: dict[str, float], _ckpt: object, name: str = name) -> None:
            # on stderr as each epoch ends: a run cut short by a time limit still shows its curve
            print(f"{name} {metrics_line(metrics)}", file=sys.stderr, flush=True)

        curves[name] = fit(cfg, progress, prepared=prepared[key]).metrics
    return curves


def metrics_line(metrics: Mapping[str, float]) -> str:
    keys = ("epoch", "train_loss", "test_acc", "epoch_time_s")
    return " ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)


def compare(curves: Mapping[str, list[dict[str, float]]], ref: str = REFERENCE) -> dict[str, dict[str, Any]]:
    """For each run other than ``ref``: largest relative train-loss gap and accuracy deltas."""
    out: dict[str, dict[str, Any]] = {}
    base = curves.get(ref, [])
    for name, rows in curves.items():
        if name == ref:
            continue
        gaps = [
            abs(r["train_loss"] - b["train_loss"]) / max(abs(b["train_loss"]), 1e-12)
            for r, b in zip(rows, base)
        ]
        out[name] = {
            "max_rel_loss_gap": max(gaps) if gaps else None,
            "final_acc_delta": _last(rows, "test_acc") - _last(base, "test_acc"),
            "best_acc_delta": _best(rows) - _best(base),
        }
    return out


def _last(rows: Sequence[Mapping[str, float]], key: str) -> float:
    return next((r[key] for r in reversed(rows) if key in r), math.nan)


def _best(rows: Sequence[Mapping[str, float]]) -> float:
    return max((r["test_acc"] for r in rows if "test_acc" in r), default=math.nan)


def format_curves(curves: Mapping[str, list[dict[str, float]]]) -> str:
    names = list(curves)
    columns = ["epoch"] + [f"{n} {m}" for n in names for m in ("train loss", "test acc")]
    epochs = max((len(rows) for rows in curves.values()), default=0)
    rows = []
    for e in range(epochs):
        row = [str(e + 1)]
        for n in names:
            m = curves[n][e] if e < len(curves[n]) else {}
            row += [fmt(m.get("train_loss"), 4), fmt(m.get("test_acc"), 4)]
        rows.append(row)
    return format_table(columns, rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="precision", description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=positive_int, default=6, help="epochs per precision (default 6)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--cache-dir", default=None, help="data/teacher cache (default: a fresh temp dir)")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", default=None, help="config overrides (dotted)")
    p.add_argument(
        "--no-noise-floor",
        dest="noise_floor",
        action="store_false",
        help="skip the fp32 run with the next seed (the seed-to-seed drift bf16 is judged against)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny subset and model, 1 epoch (CI)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from ckd_search.cli import parse_overrides

    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with given_or_temp_dir(args.cache_dir, "ckd-precision-") as cache:
        values: dict[str, Any] = dict(SMOKE) if args.smoke else {}
        values.update({"run.epochs": 1 if args.smoke else args.epochs, "run.device": args.device})
        values.update(parse_overrides(args.set))
        values["data.cache_dir"] = cache
        base = Config.from_dict(values)
        curves = train_curves(base, runs(base, args.noise_floor))
    print(format_curves(curves))
    for name, c in compare(curves).items():
        gap = c["max_rel_loss_gap"]
        print(
            f"{name} vs {REFERENCE}: max relative train-loss gap {'-' if gap is None else f'{gap:.2%}'}, "
            f"final acc {c['final_acc_delta']:+.4f}, best acc {c['best_acc_delta']:+.4f}"
        )
    print(f"device: {device_name(base)}")
    return 0


def device_name(cfg: Config) -> str:
    from ckd_search.engine import resolve_device

    device = resolve_device(cfg.run.device)
    if device.type == "cuda":  # the engine's CUDA setup: fp32 convolutions run in TF32, matmuls in fp32
        return f"{torch.cuda.get_device_name(device)} (the fp32 runs use TF32 convolutions)"
    return f"CPU, {torch.get_num_threads()} threads"


if __name__ == "__main__":
    sys.exit(main())
