"""Does the bf16 path train like fp32? Loss and accuracy curves of the same run in both precisions.

``python bench/precision.py [--epochs N] [--set KEY=VALUE ...] [--device cuda] [--smoke]``. Trains one
config (same seed, same data, same teacher) with ``run.precision=fp32`` and ``run.precision=bf16`` and
prints the per-epoch train loss and test accuracy side by side, the largest relative train-loss gap
and the final/best accuracy differences.

bf16 is spikingjelly's PrecisionConfig (bf16 autocast, fp32 neuron state), which needs its CUDA
Triton neuron plan; on a machine without CUDA the bf16 column is skipped with a note, so the script
still runs end to end in CI (``--smoke``).
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

from ckd_search.config import Config
from ckd_search.perf.cpu_epoch import SMOKE  # the same tiny run as the CPU epoch bench
from ckd_search.perf.timing import fmt
from ckd_search.perf.timing import format_table
from ckd_search.storage import given_or_temp_dir

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")


def available(precision: str, device: torch.device) -> str | None:
    """Why ``precision`` cannot run on ``device`` (None when it can)."""
    if precision == "bf16" and device.type != "cuda":
        return "bf16 needs CUDA (spikingjelly's Triton neuron plan); skipped"
    return None


def train_curves(base: Config, precisions: Sequence[str] = PRECISIONS) -> dict[str, list[dict[str, float]]]:
    """Per-epoch metrics of ``base`` trained in each precision that can run here (same prepared data)."""
    from ckd_search.engine import fit
    from ckd_search.engine import resolve_device
    from ckd_search.prepare import prepare

    device = resolve_device(base.run.device)
    prepared = prepare(base)  # the teacher and data do not depend on the student's precision
    curves: dict[str, list[dict[str, float]]] = {}
    for precision in precisions:
        if (why := available(precision, device)) is not None:
            log.warning("%s", why)
            continue

        def progress(metrics: dict[str, float], _ckpt: object, name: str = precision) -> None:
            # on stderr as each epoch ends: a run cut short by a time limit still shows its curve
            print(f"{name} {metrics_line(metrics)}", file=sys.stderr, flush=True)

        result = fit(base.replace(**{"run.precision": precision}), progress, prepared=prepared)
        curves[precision] = result.metrics
    return curves


def metrics_line(metrics: Mapping[str, float]) -> str:
    keys = ("epoch", "train_loss", "test_acc", "epoch_time_s")
    return " ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)


def compare(curves: Mapping[str, list[dict[str, float]]], ref: str = "fp32") -> dict[str, dict[str, Any]]:
    """For each precision other than ``ref``: largest relative train-loss gap and accuracy deltas."""
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
    p = argparse.ArgumentParser(prog="precision", description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6, help="epochs per precision (default 6)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--cache-dir", default=None, help="data/teacher cache (default: a fresh temp dir)")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", default=None, help="config overrides (dotted)")
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
        curves = train_curves(Config.from_dict(values))
    print(format_curves(curves))
    for name, c in compare(curves).items():
        gap = c["max_rel_loss_gap"]
        print(
            f"{name} vs fp32: max relative train-loss gap {'-' if gap is None else f'{gap:.2%}'}, "
            f"final acc {c['final_acc_delta']:+.4f}, best acc {c['best_acc_delta']:+.4f}"
        )
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (no CUDA)"
    print(f"device: {device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
