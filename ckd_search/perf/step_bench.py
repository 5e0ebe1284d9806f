"""Throughput of the full CKD training step against the plain spikingjelly two-stream baseline.

``python bench/step_throughput.py [--smoke] [--scaling] ...`` or ``ckd-search bench step ...``.
The CKD rows time ``Trainer.step`` (both streams, CKA on the membrane tap, KD from cached
teacher logits, TET, AdamW); the baseline rows time the section 6 step of performance.md in the
same process. Inputs are random tensors of the real shapes: the numbers are throughput only.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import torch
import torch._dynamo.utils

from ckd_search.argtypes import OneLineParser
from ckd_search.argtypes import positive_int
from ckd_search.config import Config
from ckd_search.data.batches import Batch
from ckd_search.errors import UserError
from ckd_search.perf.synthetic import StepBatch
from ckd_search.perf.synthetic import device_batches
from ckd_search.perf.synthetic import synthetic_prepared
from ckd_search.perf.timing import SMOKE_SHAPE
from ckd_search.perf.timing import Timing
from ckd_search.perf.timing import add_shape_args
from ckd_search.perf.timing import fmt
from ckd_search.perf.timing import format_table
from ckd_search.perf.timing import print_row
from ckd_search.perf.timing import reset_peak
from ckd_search.perf.timing import time_steps

log = logging.getLogger(__name__)

COLUMNS = ("variant", "B", "T", "size", "pairs/s", "ms/step", "peak GiB", "warm-up s")
SCALING_T = (4, 6, 8, 10)
SCALING_SIZE = (48, 128)
SMOKE_SCALING_T = (2, 3)
SMOKE_SCALING_SIZE = (16, 32)
RESIDENT_BATCHES = 4  # distinct batches cycled through (different frames every step)


@dataclass(frozen=True)
class Variant:
    """One row of the table: a CKD engine config or a baseline setting."""

    name: str
    kind: str  # "ckd" or "baseline"
    about: str
    overrides: dict[str, Any] = field(default_factory=dict)  # ckd: dotted config keys
    precision: str = "fp32"  # baseline only
    compile: bool = False  # baseline only
    channels_last: bool = False  # baseline only
    gpu_only: bool = False

    @property
    def compiled(self) -> bool:
        return self.compile or bool(self.overrides.get("run.compile"))


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "ckd-fp32",
        "ckd",
        "engine step, fp32 eager, NCHW",
        {"run.precision": "fp32", "run.channels_last": False},
    ),
    Variant(
        "ckd-bf16",
        "ckd",
        "engine step, run.precision=bf16 (PrecisionConfig, fp32 state), channels_last",
        {"run.precision": "bf16", "run.channels_last": True},
        gpu_only=True,
    ),
    Variant(
        "ckd-bf16-compile",
        "ckd",
        "as ckd-bf16 plus run.compile=true",
        {"run.precision": "bf16", "run.channels_last": True, "run.compile": True},
        gpu_only=True,
    ),
    Variant(
        "ckd-bf16-graphs",
        "ckd",
        "as ckd-bf16-compile with run.compile_mode=reduce-overhead (CUDA graphs)",
        {
            "run.precision": "bf16",
            "run.channels_last": True,
            "run.compile": True,
            "run.compile_mode": "reduce-overhead",
        },
        gpu_only=True,
    ),
    Variant("base-fp32", "baseline", "plain spikingjelly 2-stream step (perf.md 6), fp32 eager"),
    Variant(
        "base-bf16-compile",
        "baseline",
        "plain step, bf16 PrecisionConfig + torch.compile",
        precision="bf16",
        compile=True,
        gpu_only=True,
    ),
    # The CKD rows use channels_last; the baseline gets it too, so the ratio is not flattered.
    Variant(
        "base-bf16-compile-cl",
        "baseline",
        "plain step, bf16 PrecisionConfig + torch.compile + channels_last",
        precision="bf16",
        compile=True,
        channels_last=True,
        gpu_only=True,
    ),
)
# Available through --variants only.
EXTRA_VARIANTS: tuple[Variant, ...] = (
    Variant(
        "ckd-fp32-cl",
        "ckd",
        "engine step, fp32 eager, channels_last",
        {"run.precision": "fp32", "run.channels_last": True},
        gpu_only=True,
    ),
    Variant(
        "ckd-bf16-compile-nchw",
        "ckd",
        "run.precision=bf16, run.compile=true, NCHW",
        {"run.precision": "bf16", "run.channels_last": False, "run.compile": True},
        gpu_only=True,
    ),
    Variant(
        "base-bf16", "baseline", "plain step, bf16 PrecisionConfig, eager", precision="bf16", gpu_only=True
    ),
    Variant(
        "ckd-bf16-jointbn",
        "ckd",
        "as ckd-bf16 with BatchNorm statistics over all T*B (model.bn_statistics=joint)",
        {"run.precision": "bf16", "run.channels_last": True, "model.bn_statistics": "joint"},
        gpu_only=True,
    ),
    Variant(
        "ckd-bf16-compile-jointbn",
        "ckd",
        "as ckd-bf16-compile with model.bn_statistics=joint (what per-step BatchNorm costs compiled)",
        {
            "run.precision": "bf16",
            "run.channels_last": True,
            "run.compile": True,
            "model.bn_statistics": "joint",
        },
        gpu_only=True,
    ),
)


@dataclass
class Row:
    variant: str
    batch: int
    timesteps: int
    size: int
    pairs_per_s: float | None = None
    ms_per_step: float | None = None
    peak_gib: float | None = None
    warmup_s: float | None = None
    status: str = "ok"  # ok, OOM or error

    def cells(self) -> list[str]:
        if self.status != "ok":
            return [
                self.variant,
                str(self.batch),
                str(self.timesteps),
                str(self.size),
                self.status,
                "-",
                fmt(self.peak_gib, 2),
                "-",
            ]
        return [
            self.variant,
            str(self.batch),
            str(self.timesteps),
            str(self.size),
            fmt(self.pairs_per_s),
            fmt(self.ms_per_step, 2),
            fmt(self.peak_gib, 2),
            fmt(self.warmup_s, 2),
        ]


@dataclass
class Result:
    rows: list[Row]
    notes: list[str]
    scaling: list[Row]
    ratio: float | None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="step_throughput", description=__doc__.splitlines()[0])
    add_shape_args(p, batch=120, steps=20)
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default auto; smoke cpu)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--variants",
        default=None,
        help="comma-separated variant names (default: all of "
        f"{', '.join(v.name for v in VARIANTS)}; extra: "
        f"{', '.join(v.name for v in EXTRA_VARIANTS)})",
    )
    p.add_argument(
        "--scaling",
        action="store_true",
        help="also time the fastest CKD variant over T in (4,6,8,10) x size in (48,128)",
    )
    p.add_argument(
        "--source",
        action="store_true",
        help="CKD rows draw batches from the engine's BatchSource (gather + augmentation) "
        "inside the timed step instead of cycling resident batches (one epoch spans warm-up and "
        "timing, so its set-up is not timed)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny CPU run (CI): B 8, T 2, 16x16, width 1/16")
    args = p.parse_args(argv)
    smoke = dict(SMOKE_SHAPE)
    full = {
        "batch": 120,
        "timesteps": 10,
        "size": 48,
        "width": 1.0,
        "classes": 101,
        "steps": 20,
        "warmup": 5,
        "device": "auto",
    }
    for key, value in (smoke if args.smoke else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def resolve(name: str) -> torch.device:
    from ckd_search.engine import resolve_device

    return resolve_device(name, "--device")


def ckd_config(
    args: argparse.Namespace, overrides: dict[str, Any], timesteps: int, size: int, device: torch.device
) -> Config:
    values = {
        "data.timesteps": timesteps,
        "data.size": size,
        "model.width": args.width,
        "optim.batch_size": args.batch,
        "run.device": str(device),
        "run.seed": args.seed,
        **overrides,
    }
    return Config.from_dict(values)


def _time_ckd(args: argparse.Namespace, cfg: Config, device: torch.device) -> Timing:
    from ckd_search.engine import Trainer
    from ckd_search.engine import frame_dtype

    torch.manual_seed(args.seed)
    # With --source, one epoch of batches covers warm-up and timing, so the epoch's set-up (draw
    # order, pinned copies) falls in the warm-up, as it is amortised over ~58 steps in a real run.
    batches_in_split = args.warmup + args.steps + 1 if args.source else 2
    prepared = synthetic_prepared(
        cfg, args.classes, n_train=batches_in_split * args.batch, n_test=16, seed=args.seed
    )
    trainer = Trainer(cfg, prepared, device)
    trainer.model.train()
    dtype = frame_dtype(cfg.run.precision)
    batches = device_batches(prepared, args.batch, RESIDENT_BATCHES, device, dtype)
    # Mid-run schedule values: half the hybrid samples replaced, KD on (all four losses).
    p = torch.tensor(0.5, device=device)
    gamma = torch.tensor(1.0, device=device)
    source: Iterator[Batch] = iter(())

    def step(i: int) -> None:
        nonlocal source
        b: Batch | StepBatch | None
        if args.source:  # the engine's batch source (gather + augmentation) inside the timed step
            b = next(source, None)
            if b is None:
                source = iter(trainer.train_source)
                b = next(source)
        else:
            b = batches[i % len(batches)]
        trainer.step(b.frames, b.labels, b.index, p, gamma)

    return time_steps(step, steps=args.steps, warmup=args.warmup, device=device)


def _time_baseline(args: argparse.Namespace, variant: Variant, cfg: Config, device: torch.device) -> Timing:
    from ckd_search.engine import frame_dtype
    from ckd_search.perf.baseline import BaselineStep

    torch.manual_seed(args.seed)
    prepared = synthetic_prepared(cfg, args.classes, n_train=2 * args.batch, n_test=1, seed=args.seed)
    runner = BaselineStep(
        args.width,
        args.classes,
        cfg.data.size,
        device,
        precision=variant.precision,
        compile=variant.compile,
        channels_last=variant.channels_last,
    )
    dtype = frame_dtype(cfg.run.precision)
    batches = device_batches(prepared, args.batch, RESIDENT_BATCHES + 1, device, dtype)
    del prepared

    def step(i: int) -> None:
        # Two different batches stand in for the hybrid and the DVS stream.
        hybrid, dvs = batches[i % RESIDENT_BATCHES], batches[i % RESIDENT_BATCHES + 1]
        runner(hybrid.frames, dvs.frames, dvs.labels)

    return time_steps(step, steps=args.steps, warmup=args.warmup, device=device)


def bench(args: argparse.Namespace, variant: Variant, timesteps: int, size: int, device: torch.device) -> Row:
    """Time one variant at (T, size); running out of device memory becomes an OOM row."""
    row = Row(
        variant.name + ("+source" if args.source and variant.kind == "ckd" else ""),
        args.batch,
        timesteps,
        size,
    )
    overrides = variant.overrides if variant.kind == "ckd" else {"run.precision": variant.precision}
    cfg = ckd_config(args, overrides, timesteps, size, device)
    reset_peak(device)
    try:
        if variant.kind == "ckd":
            timing = _time_ckd(args, cfg, device)
        else:
            timing = _time_baseline(args, variant, cfg, device)
    except torch.OutOfMemoryError:
        row.status = "OOM"
        return row
    except Exception:  # noqa: BLE001 - one broken variant (say, a compile failure) must not lose the rest
        log.exception("variant %s failed", row.variant)
        row.status = "error"
        return row
    finally:
        reset_peak(device)  # the trainer is gone with the helper's frame: free its memory now
    row.pairs_per_s = timing.per_second(args.batch)
    row.ms_per_step = timing.median_ms
    row.peak_gib = timing.peak_gib
    row.warmup_s = timing.warmup_s
    return row


def select_variants(spec: str | None) -> list[Variant]:
    known = {v.name: v for v in (*VARIANTS, *EXTRA_VARIANTS)}
    if spec is None:
        return list(VARIANTS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise UserError(f"--variants: no variant named in {spec!r}; known: {sorted(known)}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"--variants: unknown variant(s) {unknown}; known: {sorted(known)}")
    return [known[n] for n in names]


def header(args: argparse.Namespace, device: torch.device) -> list[str]:
    from importlib.metadata import version

    from spikingjelly.activation_based import functional

    lines = [f"# CKD step throughput (ckd_search.perf.step_bench){' [smoke]' if args.smoke else ''}"]
    if device.type == "cuda":
        lines.append(f"device: {torch.cuda.get_device_name(device)} ({device})")
    else:
        lines.append(
            f"device: CPU {platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} torch threads"
        )
    impl = functional.neuron_implementation("lif", device).get("implementation")
    if device.type == "cpu":  # the engine swaps in its own (run.cpu_lif); the plain baselines do not
        impl = f"{impl} (plain baselines), engine rows per run.cpu_lif (default: fused, models/cpu_lif.py)"
    lines.append(f"torch {torch.__version__}, spikingjelly {version('spikingjelly')}, LIF kernel: {impl}")
    lines.append(
        f"inputs: RANDOM frames, labels, images and teacher logits (throughput only, not accuracy); "
        f"B={args.batch} pairs, T={args.timesteps}, {args.size}x{args.size}, width {args.width:g}, "
        f"C={args.classes}"
    )
    lines.append(f"load average {os.getloadavg()[0]:.2f} (other processes on this machine skew CPU timings)")
    lines.append(
        f"timing: median of {args.steps} steps after {args.warmup} warm-up steps "
        f"({'CUDA events' if device.type == 'cuda' else 'perf_counter'}); pairs/s = B / median step"
    )
    return lines


def compile_stats() -> str:
    """What torch.compile did since the counters were last cleared (one variant's run)."""
    counters = torch._dynamo.utils.counters
    graphs = counters["stats"]["unique_graphs"]
    breaks = sum(counters["graph_break"].values())
    skips = counters["inductor"]["cudagraph_skips"]
    return (
        f"{graphs} graph(s) compiled over warm-up and timed steps (1 = no recompiles), "
        f"{breaks} graph break(s), {skips} CUDA-graph skip(s)"
    )


def runnable(variants: Sequence[Variant], device: torch.device) -> list[Variant]:
    """The variants that can run on ``device`` (the GPU-only ones need CUDA); a UserError when
    none can, rather than an empty table."""
    ok = [v for v in variants if device.type == "cuda" or not v.gpu_only]
    if not ok:
        names = ",".join(v.name for v in variants)
        need = "needs" if len(variants) == 1 else "each need"
        raise UserError(f"--variants {names}: {need} a CUDA device, and this run is on {device}")
    return ok


def run(args: argparse.Namespace) -> Result:
    """Time every selected variant (and the scaling grid); nothing is printed here."""
    device = resolve(args.device)
    selected = select_variants(args.variants)
    runnable(selected, device)  # refused before anything runs
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        # As the engine and section 6: cuDNN autotuning, TF32 for the fp32 convolutions. Matmuls in
        # IEEE fp32 as the engine (section 6 allowed TF32 there; the plain step's one matmul is its head).
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = True
    rows: list[Row] = []
    notes: list[str] = []
    for variant in selected:
        if variant.gpu_only and device.type != "cuda":
            notes.append(f"skipped {variant.name}: needs a CUDA device")
            continue
        torch._dynamo.utils.counters.clear()
        row = bench(args, variant, args.timesteps, args.size, device)
        print_row(row.cells())
        if row.status == "OOM":
            notes.append(f"{variant.name}: out of device memory at B={args.batch}")
        elif row.status == "error":
            notes.append(f"{variant.name}: failed (traceback on stderr)")
        if variant.compiled:  # printed at once too: a part cut short by its time limit keeps them
            notes.append(f"{variant.name}: {compile_stats()}")
            print(f"note: {notes[-1]}", file=sys.stderr, flush=True)
        rows.append(row)
    scaling: list[Row] = []
    ckd_rows = [r for r in rows if r.pairs_per_s is not None and r.variant.startswith("ckd")]
    if args.scaling and ckd_rows:
        best = max(ckd_rows, key=lambda r: r.pairs_per_s or 0.0)
        variant = next(
            v for v in (*VARIANTS, *EXTRA_VARIANTS) if v.name == best.variant.removesuffix("+source")
        )
        ts, sizes = (SMOKE_SCALING_T, SMOKE_SCALING_SIZE) if args.smoke else (SCALING_T, SCALING_SIZE)
        for size in sizes:
            for t in ts:
                scaling.append(bench(args, variant, t, size, device))
                print_row(scaling[-1].cells())
    base_rows = [r for r in rows if r.pairs_per_s is not None and r.variant.startswith("base")]
    ratio = None
    if ckd_rows and base_rows:
        ratio = max(r.pairs_per_s or 0.0 for r in ckd_rows) / max(r.pairs_per_s or 0.0 for r in base_rows)
    return Result(rows=rows, notes=notes, scaling=scaling, ratio=ratio)


def report(args: argparse.Namespace, result: Result) -> str:
    device = resolve(args.device)
    out = header(args, device)
    out += ["", format_table(COLUMNS, [r.cells() for r in result.rows]), ""]
    for variant in select_variants(args.variants):
        out.append(f"  {variant.name}: {variant.about}")
    out += [f"note: {n}" for n in result.notes]
    if args.scaling:
        name = result.scaling[0].variant if result.scaling else "-"
        out += ["", f"# scaling of the fastest CKD variant ({name})", ""]
        out.append(
            format_table(COLUMNS, [r.cells() for r in result.scaling])
            if result.scaling
            else "(no CKD variant ran)"
        )
    out.append("")
    ckd = [r for r in result.rows if r.variant.startswith("ckd") and r.pairs_per_s]
    base = [r for r in result.rows if r.variant.startswith("base") and r.pairs_per_s]
    if ckd and base:
        bc = max(ckd, key=lambda r: r.pairs_per_s or 0.0)
        bb = max(base, key=lambda r: r.pairs_per_s or 0.0)
        out.append(
            f"best CKD {bc.variant} {fmt(bc.pairs_per_s)} pairs/s; best baseline {bb.variant} "
            f"{fmt(bb.pairs_per_s)} pairs/s"
        )
    out.append(f"ratio CKD/best-baseline = {'n/a' if result.ratio is None else f'{result.ratio:.2f}'}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(report(args, result), flush=True)
    failed = any(r.status == "error" for r in (*result.rows, *result.scaling))
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
