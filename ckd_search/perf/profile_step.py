"""Where the CKD step spends its time, and what the candidate changes of ``perf.variants`` buy.

``python -m ckd_search.perf.profile_step [--set KEY=VALUE ...] [--compile] [--smoke]`` prints
(1) a phase breakdown of one step (inputs, forward + losses, backward, optimizer), (2) the top
operators from ``torch.profiler`` per step, (3) an A/B table of the variants, each checked
against the engine for equal losses and gradients on the same batch. Default shapes are the
default ``Config()`` (width 0.125, 32x32, T=6, batch 64) on the CPU, random inputs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity
from torch.profiler import profile

from ckd_search.argtypes import OneLineParser
from ckd_search.argtypes import non_negative_int
from ckd_search.argtypes import positive_int
from ckd_search.config import Config
from ckd_search.engine import Trainer
from ckd_search.engine import compile_fresh
from ckd_search.engine import frame_dtype
from ckd_search.engine import resolve_device
from ckd_search.errors import UserError
from ckd_search.models.cpu_lif import use_fused_cpu_lif
from ckd_search.perf import variants
from ckd_search.perf.synthetic import StepBatch
from ckd_search.perf.synthetic import device_batches
from ckd_search.perf.synthetic import synthetic_prepared
from ckd_search.perf.timing import fmt
from ckd_search.perf.timing import format_table
from ckd_search.perf.timing import synchronize
from ckd_search.perf.timing import time_steps
from ckd_search.step import StepInputs

log = logging.getLogger(__name__)

SMOKE = {"data.size": 16, "data.timesteps": 2, "model.width": 0.0625, "optim.batch_size": 8}


@dataclass(frozen=True)
class Experiment:
    name: str
    about: str
    setup: Callable[[Trainer], None]  # receives the Trainer
    threads: int | None = None
    cpu_only: bool = False


def _engine(trainer: Trainer) -> None:
    """The engine as it is."""


def _fused(trainer: Trainer) -> None:
    trainer.loss_fn = variants.fused_stream_losses


def _joint(trainer: Trainer) -> None:
    trainer.loss_fn = variants.joint_bn_losses


def _spikingjelly_lif(trainer: Trainer) -> None:
    use_fused_cpu_lif(trainer.model.student, fused=False)


def _compile(trainer: Trainer) -> None:
    trainer.loss_fn = compile_fresh(trainer.loss_fn, "default")


EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment("engine", "Trainer.step as it is", _engine),
    Experiment("streams-fused", "both streams as one 2B batch, BatchNorm per stream", _fused),
    Experiment("streams-jointBN", "as streams-fused with one BN over both streams (NOT exact)", _joint),
    Experiment(
        "sj-lif",
        "spikingjelly's own CPU LIF loop instead of the engine's fused one (run.cpu_lif=spikingjelly)",
        _spikingjelly_lif,
        cpu_only=True,
    ),
)
COMPILE = Experiment(
    "compile", "torch.compile(ckd_losses) (run.compile=true), warm-up includes compiling", _compile
)


ONE_THREAD = Experiment("engine-1thread", "engine with torch.set_num_threads(1)", _engine, threads=1)
# The experiments that need a flag to run at all, and that flag.
NEEDS_FLAG = {COMPILE.name: "--compile", ONE_THREAD.name: "--one-thread"}


def select_experiments(args: argparse.Namespace, device: torch.device) -> list[Experiment]:
    """The experiments this run times, ``engine`` first (the reference of the speedups).

    ``--only`` narrows them (``engine`` always runs). A UserError (one line, exit code 2) refuses a
    name that is no experiment (listing the known ones), one whose flag is missing (``compile``
    without ``--compile``) and a CPU-only one on another device.
    """
    chosen = list(EXPERIMENTS) + ([COMPILE] if args.compile else [])
    if args.one_thread:
        chosen.append(ONE_THREAD)
    if device.type != "cpu":
        chosen = [e for e in chosen if not e.cpu_only]
    if args.only is None:
        return chosen
    known = [e.name for e in (*EXPERIMENTS, COMPILE, ONE_THREAD)]
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if not names:
        raise UserError(f"--only: no experiment named in {args.only!r}; known: {', '.join(known)}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"--only: unknown experiment(s) {unknown}; known: {', '.join(known)}")
    for name in names:
        if all(e.name != name for e in chosen):
            why = f"needs {NEEDS_FLAG[name]}" if name in NEEDS_FLAG else f"runs on a CPU only, not {device}"
            raise UserError(f"--only {name}: {why}")
    return [e for e in chosen if e.name in names or e.name == "engine"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="profile_step", description=__doc__.splitlines()[0])
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", default=None, help="config overrides")
    p.add_argument("--classes", type=positive_int, default=10, help="classes C (default 10, as Digits-DVS)")
    p.add_argument("--steps", type=positive_int, default=None, help="timed steps per experiment (default 8)")
    p.add_argument("--warmup", type=non_negative_int, default=None, help="warm-up steps (default 2)")
    p.add_argument(
        "--rounds", type=positive_int, default=None, help="interleaved timing rounds (default 3; smoke 1)"
    )
    p.add_argument("--top", type=positive_int, default=15, help="operators to list")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--compile", action="store_true", help="also try torch.compile (slow to compile)")
    p.add_argument("--one-thread", action="store_true", help="also run the engine with 1 torch thread")
    p.add_argument("--only", default=None, help="comma-separated experiment names")
    p.add_argument("--device", default="cpu")
    p.add_argument("--smoke", action="store_true", help="tiny shapes (CI)")
    args = p.parse_args(argv)
    args.steps = args.steps or (2 if args.smoke else 8)
    args.rounds = args.rounds or (1 if args.smoke else 3)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 2)
    return args


def build(
    args: argparse.Namespace, device: torch.device, seed: int = 0
) -> tuple[Trainer, list[StepBatch], Config]:
    from ckd_search.cli import parse_overrides

    values: dict[str, object] = dict(SMOKE) if args.smoke else {}
    values.update(parse_overrides(args.set))
    values["run.device"] = str(device)
    cfg = Config.from_dict(values)
    b = cfg.optim.batch_size
    torch.manual_seed(seed)
    prepared = synthetic_prepared(cfg, args.classes, n_train=2 * b, n_test=8, seed=seed)
    trainer = Trainer(cfg, prepared, device)
    dtype = frame_dtype(cfg.run.precision)
    return trainer, device_batches(prepared, b, 2, device, dtype, seed=seed + 1), cfg


def phases(trainer: Trainer, batches: list[StepBatch], steps: int, device: torch.device) -> dict[str, float]:
    """Median ms per phase, from a replica of ``Trainer.step`` with a timer between the phases.

    Keep in step with ``ckd_search.engine.Trainer.step`` (same calls, same order).
    """

    tr = trainer
    p = torch.tensor(0.5, device=device)
    gamma = torch.tensor(1.0, device=device)
    out: dict[str, list[float]] = {"inputs": [], "forward+losses": [], "backward": [], "optimizer": []}
    for i in range(steps):
        b = batches[i % len(batches)]
        synchronize(device)
        t0 = time.perf_counter()
        pair = tr.pairing(b.index, b.labels, tr.dev_gen)
        mask = torch.rand(b.labels.shape, generator=tr.dev_gen, device=device) < p
        inputs = StepInputs(
            dvs=b.frames,
            static=tr.static[pair],
            labels=b.labels,
            teacher_logits=None if tr.teacher_logits is None else tr.teacher_logits[pair],
            replace_mask=mask,
            gamma=gamma,
        )
        synchronize(device)
        t1 = time.perf_counter()
        with tr.autocast():
            parts = tr.loss_fn(tr.model, inputs, tr.cfg)
        synchronize(device)
        t2 = time.perf_counter()
        tr.optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        synchronize(device)
        t3 = time.perf_counter()
        tr.optimizer.step()
        synchronize(device)
        t4 = time.perf_counter()
        for key, dt in zip(out, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            out[key].append(dt * 1e3)
    return {k: statistics.median(v) for k, v in out.items()}


def top_ops(
    trainer: Trainer, batches: list[StepBatch], steps: int, top: int
) -> tuple[list[list[str]], float]:
    """The operators with the most self time per step (CPU activity), and the total per step."""
    p = torch.tensor(0.5)
    gamma = torch.tensor(1.0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            b = batches[i % len(batches)]
            trainer.step(b.frames, b.labels, b.index, p, gamma)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e3 / steps
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    rows = []
    for e in ranked:
        ms = e.self_cpu_time_total / 1e3 / steps
        rows.append([e.key, fmt(ms, 2), fmt(100 * ms / total, 1), fmt(e.count / steps, 0)])
    return rows, total


def equivalence(args: argparse.Namespace, exp: Experiment, device: torch.device) -> tuple[float, float]:
    """(max |loss diff|, max gradient diff relative to the largest gradient) vs the engine.

    One forward and backward on the same batch and weights. On a CPU both run in float64: a
    spiking net is discontinuous, so fp32 rounding differences (a BatchNorm sum in another
    order) flip the odd spike and the gradients then differ for no fault of the variant.
    """
    results = []
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    for setup in (_engine, exp.setup):
        trainer, batches, _ = build(args, device)
        setup(trainer)
        tr = trainer
        tr.model.to(dtype)
        b = batches[0]
        pair = tr.pairing(b.index, b.labels, tr.dev_gen)
        mask = torch.arange(b.labels.numel(), device=device) % 2 == 0
        teacher = None if tr.teacher_logits is None else tr.teacher_logits[pair].to(dtype)
        inputs = StepInputs(
            dvs=b.frames.to(dtype),
            static=tr.static[pair].to(dtype),
            labels=b.labels,
            teacher_logits=teacher,
            replace_mask=mask,
            gamma=torch.tensor(1.0, device=device),
        )
        with tr.autocast():
            parts = tr.loss_fn(tr.model, inputs, tr.cfg)
        parts["loss"].backward()
        grads = [
            q.grad.detach().double().clone()
            if q.grad is not None
            else torch.zeros_like(q, dtype=torch.float64)
            for q in tr.model.parameters()
        ]
        results.append((parts["loss"].detach().double(), grads))
    (l0, g0), (l1, g1) = results
    scale = max(float(g.abs().max()) for g in g0) or 1.0
    gdiff = max(float((a - b).abs().max()) for a, b in zip(g0, g1)) / scale
    return float((l0 - l1).abs()), gdiff


def _stepper(trainer: Trainer, batches: list[StepBatch], device: torch.device) -> Callable[[int], None]:
    p = torch.tensor(0.5, device=device)
    gamma = torch.tensor(1.0, device=device)

    def step(i: int) -> None:
        b = batches[i % len(batches)]
        trainer.step(b.frames, b.labels, b.index, p, gamma)

    return step


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device, "--device")
    chosen = select_experiments(args, device)  # a bad --only is refused before anything is built
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    trainer, batches, cfg = build(args, device)
    d = cfg.data
    print(
        f"# CKD step profile{' [smoke]' if args.smoke else ''}: {device}, {threads} torch threads, "
        f"load average {os.getloadavg()[0]:.2f}, torch {torch.__version__}"
    )
    print(
        f"config: B={cfg.optim.batch_size}, T={d.timesteps}, {d.size}x{d.size}, width {cfg.model.width:g}, "
        f"C={args.classes}; RANDOM inputs (throughput only)"
    )
    warm = _stepper(trainer, batches, device)
    for i in range(args.warmup):
        warm(i)
    ph = phases(trainer, batches, args.steps, device)
    total = sum(ph.values())
    print("\n## phases of one step (median ms)\n")
    print(
        format_table(
            ("phase", "ms", "%"),
            [[k, fmt(v, 2), fmt(100 * v / total, 1)] for k, v in ph.items()]
            + [["total", fmt(total, 2), "100.0"]],
        )
    )
    if device.type == "cpu":
        rows, per_step = top_ops(trainer, batches, max(1, args.steps // 2), args.top)
        print(f"\n## top operators by self CPU time (torch.profiler; {per_step:.1f} ms/step profiled)\n")
        print(format_table(("operator", "self ms/step", "%", "calls/step"), rows))
    del trainer

    # Every variant gets its own trainer; rounds interleave them (A B C A B C ...) so that load
    # from other processes hits all alike, and each reports its best round (least disturbed).
    built = []
    for exp in chosen:
        trainer, batches, cfg = build(args, device)
        exp.setup(trainer)
        built.append((exp, _stepper(trainer, batches, device)))
    best: dict[str, float] = {}
    warmup_s: dict[str, float] = {}
    for rnd in range(args.rounds):
        for exp, step in built:
            if exp.threads:
                torch.set_num_threads(exp.threads)
            try:
                timing = time_steps(
                    step, steps=args.steps, warmup=args.warmup if rnd == 0 else 1, device=device
                )
            finally:
                torch.set_num_threads(threads)
            best[exp.name] = min(best.get(exp.name, float("inf")), timing.median_ms)
            warmup_s.setdefault(exp.name, timing.warmup_s)
    del built
    rows = []
    base_ms = best[chosen[0].name]
    for exp in chosen:
        dl, dg = (0.0, 0.0) if exp.setup is _engine else equivalence(args, exp, device)
        ms = best[exp.name]
        rows.append(
            [
                exp.name,
                fmt(ms, 1),
                fmt(cfg.optim.batch_size * 1e3 / ms),
                fmt(base_ms / ms, 2),
                fmt(warmup_s[exp.name], 1),
                f"{dl:.1e}",
                f"{dg:.1e}",
            ]
        )
    print(
        f"\n## variants (best of {args.rounds} interleaved rounds of the median of {args.steps} steps, "
        f"after {args.warmup} warm-up; load average "
        f"{os.getloadavg()[0]:.2f})\n"
    )
    print(format_table(("variant", "ms/step", "pairs/s", "speedup", "warm-up s", "dloss", "rel dgrad"), rows))
    print()
    for exp in chosen:
        print(f"  {exp.name}: {exp.about}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
