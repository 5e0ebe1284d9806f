"""Throughput of 1, 2, 3 CKD trials packed on one device as separate processes (as Ray packs them).

``python bench/packing.py [--trials 1,2,3] [--smoke] ...``. For each n, n spawned processes each
cap their share of GPU memory with ``torch.cuda.set_per_process_memory_fraction(1/n)``, share
``TORCHINDUCTOR_CACHE_DIR`` / ``TRITON_CACHE_DIR`` (so only the first compiles), build a
``Trainer`` on random data, warm up, wait at a barrier and time N steps together. Aggregate
pairs/s = all pairs / (last finish - first start); per trial = aggregate / n (each trial's share
of that span); speedup = aggregate(n) / aggregate(1). One window of ~30 steps varies by 10 % or so:
``--repeats R`` times R windows per level and reports the median and the range.

``--epochs N`` times whole trials instead of steps: each process runs ``engine.fit`` for N epochs
on random data of the given split sizes (default: Digits-DVS's 1,437 / 360), evaluating and writing
a checkpoint every epoch, as a Tune trial does. Those pauses (evaluation, the once-per-epoch metric
read, checkpoint writes) leave the GPU idle for the other trials: packing gains more than in steps.

Without NVIDIA MPS, packed processes' kernels are time-sliced on the GPU; ``--mps`` starts an MPS
control daemon of this run's own (pipe and log folders under the cache root, nothing system-wide
touched) so they can run side by side, and stops it at the end: the two tables show what MPS buys.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict
from dataclasses import dataclass
from typing import Any

import torch

from ckd_search.argtypes import OneLineParser
from ckd_search.argtypes import non_negative_int
from ckd_search.argtypes import positive_int
from ckd_search.config import COMPILE_MODES
from ckd_search.config import Config
from ckd_search.errors import UserError
from ckd_search.perf.timing import SMOKE_SHAPE
from ckd_search.perf.timing import add_shape_args
from ckd_search.perf.timing import fmt
from ckd_search.perf.timing import format_table
from ckd_search.perf.timing import print_row
from ckd_search.storage import given_or_temp_dir
from ckd_search.storage import output_dir

log = logging.getLogger(__name__)

COLUMNS = (
    "trials",
    "pairs/s",
    "pairs/s range",
    "pairs/s per trial",
    "ms/step",
    "speedup",
    "peak GiB",
    "mem fraction",
)
RESULT_TIMEOUT_S = 1800.0  # per packing level: generous, compiling 3 trials at once is slow


@dataclass(frozen=True)
class TrialSpec:
    """What every packed trial runs (picklable: it crosses the spawn boundary)."""

    batch: int
    timesteps: int
    size: int
    width: float
    classes: int
    steps: int
    warmup: int
    device: str
    precision: str
    compile: bool
    channels_last: bool
    threads: int | None
    seed: int
    epochs: int = 0  # > 0: time whole trials (engine.fit, eval and checkpoint every epoch)
    train_samples: int = 0
    test_samples: int = 0
    compile_mode: str = "default"  # run.compile_mode, with compile


def _worker(rank: int, n: int, spec: TrialSpec, barrier: Any, results: Any) -> None:
    """One packed trial: build, warm up, meet the others, time ``spec.steps`` steps, report."""
    try:
        results.put({"rank": rank, **_trial(rank, n, spec, barrier)})
    except torch.OutOfMemoryError:
        barrier.abort()
        results.put({"rank": rank, "status": "OOM"})
    except Exception:  # noqa: BLE001 - report any failure to the parent instead of hanging it
        barrier.abort()
        results.put({"rank": rank, "status": "error", "error": traceback.format_exc()})


def trial_config(spec: TrialSpec, rank: int) -> Config:
    """The Config trial ``rank`` of a packing level runs (ConfigError when a value breaks a rule)."""
    values: dict[str, Any] = {
        "data.timesteps": spec.timesteps,
        "data.size": spec.size,
        "model.width": spec.width,
        "optim.batch_size": spec.batch,
        "run.device": spec.device,
        "run.seed": spec.seed + rank,
        "run.precision": spec.precision,
        "run.compile": spec.compile,
        "run.compile_mode": spec.compile_mode,
        "run.channels_last": spec.channels_last,
    }
    if spec.epochs:
        values.update({"run.epochs": spec.epochs, "run.eval_every": 1, "run.checkpoint_every": 1})
    return Config.from_dict(values)


def _trial(rank: int, n: int, spec: TrialSpec, barrier: Any) -> dict[str, Any]:
    from ckd_search.engine import Trainer
    from ckd_search.engine import fit
    from ckd_search.engine import frame_dtype
    from ckd_search.perf.synthetic import device_batches
    from ckd_search.perf.synthetic import synthetic_prepared
    from ckd_search.perf.timing import synchronize

    device = torch.device(spec.device)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    if device.type == "cuda":
        if device.index is None:  # the memory cap needs an index ("cuda" alone is refused)
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.cuda.set_per_process_memory_fraction(1.0 / n, device)
    cfg = trial_config(spec, rank)
    torch.manual_seed(spec.seed + rank)
    n_train, n_test = (spec.train_samples, spec.test_samples) if spec.epochs else (2 * spec.batch, 8)
    prepared = synthetic_prepared(cfg, spec.classes, n_train=n_train, n_test=n_test, seed=spec.seed + rank)
    trainer = Trainer(cfg, prepared, device)
    dtype = frame_dtype(spec.precision)
    batches = device_batches(prepared, spec.batch, 4, device, dtype, seed=spec.seed + rank)
    p = torch.tensor(0.5, device=device)
    gamma = torch.tensor(1.0, device=device)

    def step(i: int) -> None:
        b = batches[i % len(batches)]
        trainer.step(b.frames, b.labels, b.index, p, gamma)

    for i in range(spec.warmup):  # kernels compiled and cached in this process before the clock starts
        step(i)
    if spec.epochs:
        trainer.evaluate()  # the no-grad kernels and eval batch shapes a trial's fit meets, off the clock
    synchronize(device)
    barrier.wait()  # all trials start timing together
    start = time.time()
    if spec.epochs:
        del trainer, batches
        with tempfile.TemporaryDirectory(prefix="ckd-packed-trial-") as checkpoints:
            result = fit(cfg, prepared=prepared, checkpoint_dir=checkpoints)
        pairs = result.epochs_run * (n_train // spec.batch) * spec.batch  # drop_last batches
    else:
        for i in range(spec.steps):
            step(spec.warmup + i)
        pairs = spec.steps * spec.batch
    synchronize(device)
    end = time.time()
    # over the whole trial, warm-up and compilation included: what has to fit in the 1/n share
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"status": "ok", "start": start, "end": end, "pairs": pairs, "peak_gib": peak}


def run_packed(n: int, spec: TrialSpec, worker: Callable[..., None] | None = None) -> list[dict[str, Any]]:
    """Spawn ``n`` trials (``worker``: :func:`_worker`), wait for their reports (sorted by rank)."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    target = worker or _worker
    procs = [
        ctx.Process(target=target, args=(rank, n, spec, barrier, results), daemon=True) for rank in range(n)
    ]
    for proc in procs:
        proc.start()
    reports: list[dict[str, Any]] = []
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    while len(reports) < n:
        try:
            reports.append(results.get(timeout=5.0))
        except queue.Empty:
            if time.monotonic() > deadline or not any(p.is_alive() for p in procs):
                break
            if len(reports) + sum(p.is_alive() for p in procs) < n:
                # a trial died without a report (segfault, the OOM killer): free the others from
                # the barrier, where they would otherwise wait out RESULT_TIMEOUT_S
                barrier.abort()
    for proc in procs:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
    missing = n - len(reports)
    reports += [{"rank": -1, "status": "error", "error": "no report (process died)"}] * missing
    return sorted(reports, key=lambda r: r["rank"])


@dataclass(frozen=True)
class Window:
    """One timed window of packed trials, all started at one barrier."""

    aggregate: float  # all trials' pairs over the span from the first start to the last end
    ms_step: float  # mean over trials of each one's own ms per step
    peak_gib: float | None

    @classmethod
    def of(cls, reports: Sequence[dict[str, Any]], batch: int) -> Window:
        span = max(r["end"] for r in reports) - min(r["start"] for r in reports)
        ms = [(r["end"] - r["start"]) * 1e3 * batch / r["pairs"] for r in reports]
        peaks = [r["peak_gib"] for r in reports if r["peak_gib"] is not None]
        return cls(sum(r["pairs"] for r in reports) / span, sum(ms) / len(ms), max(peaks) if peaks else None)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="packing", description=__doc__.splitlines()[0])
    p.add_argument("--trials", default="1,2,3", help="packing levels to run (default 1,2,3)")
    add_shape_args(p, batch=64, steps=30, per=" per trial")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if present; smoke cpu)")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default=None,
        help="run.precision (default bf16 on CUDA, fp32 on CPU)",
    )
    p.add_argument(
        "--epochs",
        type=non_negative_int,
        default=0,
        help="time whole trials of N epochs (engine.fit, eval + checkpoint each epoch) instead of steps",
    )
    p.add_argument(
        "--train-samples", type=positive_int, default=None, help="with --epochs (default 1437; smoke 32)"
    )
    p.add_argument(
        "--test-samples", type=positive_int, default=None, help="with --epochs (default 360; smoke 16)"
    )
    p.add_argument("--compile", action="store_true", help="run.compile=true (compiles in every trial)")
    p.add_argument(
        "--compile-mode",
        choices=COMPILE_MODES,
        default=None,
        help="run.compile_mode, implies --compile (reduce-overhead: CUDA graphs)",
    )
    p.add_argument("--no-channels-last", action="store_true", help="run.channels_last=false")
    p.add_argument(
        "--threads-per-trial",
        type=int,
        default=None,
        help="torch threads per trial (default: cores // n on CPU, 2 on CUDA; smoke 1)",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="shared TORCHINDUCTOR_CACHE_DIR/TRITON_CACHE_DIR root (default: a temp dir)",
    )
    p.add_argument(
        "--mps",
        action="store_true",
        help="run the trials under an MPS control daemon of this run's own (CUDA only)",
    )
    p.add_argument(
        "--repeats",
        type=positive_int,
        default=1,
        help="timed windows per packing level, each with fresh trial processes; the table gives the "
        "median aggregate and the range over them (default 1)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny CPU run, 1 thread per trial (CI)")
    args = p.parse_args(argv)
    smoke = {**SMOKE_SHAPE, "threads_per_trial": 1, "train_samples": 32, "test_samples": 16}
    full = {
        "train_samples": 1437,  # Digits-DVS's train / test split
        "test_samples": 360,
        "batch": 64,
        "timesteps": 10,
        "size": 48,
        "width": 1.0,
        "classes": 101,
        "steps": 30,
        "warmup": 5,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    for key, value in (smoke if args.smoke else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.precision is None:
        args.precision = "bf16" if args.device.startswith("cuda") else "fp32"
    if args.compile_mode is None:
        args.compile_mode = "default"
    else:
        args.compile = True
    try:
        args.levels = [int(x) for x in args.trials.split(",") if x.strip()]
    except ValueError:
        args.levels = []
    if not args.levels or min(args.levels) < 1:
        p.error(f"--trials must list positive integers, got {args.trials!r}")
    if args.epochs < 0:
        p.error(f"--epochs must be >= 0, got {args.epochs}")
    if args.epochs and args.train_samples < args.batch:
        p.error(f"--train-samples {args.train_samples} is smaller than --batch {args.batch}")
    if args.mps and not args.device.startswith("cuda"):
        p.error(f"--mps needs a CUDA device, got --device {args.device}")
    return args


def gpu_sharing() -> str:
    """How packed processes share a GPU: with an MPS daemon their kernels can run side by side,
    without one the GPU time-slices between them, which decides what packing can gain."""
    pipe = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")
    if os.path.exists(os.path.join(pipe, "control")):
        return f"MPS daemon found ({pipe}): packed trials' kernels can overlap"
    return "time-sliced (no MPS daemon found): packed trials' kernels take turns"


MPS_CONTROL = "nvidia-cuda-mps-control"
MPS_ENV = ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")


@contextmanager
def private_mps(root: str) -> Iterator[str]:
    """An MPS control daemon of this process's own for the trials it spawns; its pipe folder.

    The daemon listens under ``root`` (not the system's ``/tmp/nvidia-mps``), so no other program's
    processes join it; children find it through ``CUDA_MPS_PIPE_DIRECTORY``, which is set here
    before anything touches CUDA and restored after. ``quit`` stops it and its server on exit.
    """
    control = shutil.which(MPS_CONTROL)
    if control is None:
        raise UserError(f"--mps: {MPS_CONTROL} not found on PATH (it comes with the NVIDIA driver)")
    folders = dict(zip(MPS_ENV, (os.path.join(root, "mps-pipe"), os.path.join(root, "mps-log"))))
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)
    env = {**os.environ, **folders}
    started = subprocess.run([control, "-d"], env=env, capture_output=True, text=True, timeout=60)
    if started.returncode != 0:
        raise UserError(f"--mps: {MPS_CONTROL} -d failed: {started.stderr.strip() or started.returncode}")
    saved = {key: os.environ.get(key) for key in MPS_ENV}
    os.environ.update(folders)
    # `timeout` and schedulers stop a run with SIGTERM, which skips `finally`: make it an exit.
    on_term = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        yield folders["CUDA_MPS_PIPE_DIRECTORY"]
    finally:
        signal.signal(signal.SIGTERM, on_term)
        subprocess.run([control], input="quit\n", env=env, capture_output=True, text=True, timeout=60)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def trial_spec(args: argparse.Namespace, n: int) -> TrialSpec:
    """What each of ``n`` packed trials runs, from the parsed flags."""
    cores = os.cpu_count() or 1
    threads = args.threads_per_trial or (2 if args.device.startswith("cuda") else max(1, cores // n))
    return TrialSpec(
        batch=args.batch,
        timesteps=args.timesteps,
        size=args.size,
        width=args.width,
        classes=args.classes,
        steps=args.steps,
        warmup=args.warmup,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        compile_mode=args.compile_mode,
        channels_last=not args.no_channels_last,
        threads=threads,
        seed=args.seed,
        epochs=args.epochs,
        train_samples=args.train_samples,
        test_samples=args.test_samples,
    )


def check_trials(args: argparse.Namespace) -> None:
    """Build every trial's Config here, before any process starts: a value that breaks a config rule
    (``--batch 1``, ``--seed -5``) is one ConfigError line, not a traceback from each spawned trial."""
    for n in args.levels:
        spec = trial_spec(args, n)
        for rank in range(n):
            trial_config(spec, rank)


def main(argv: Sequence[str] | None = None) -> int:
    from ckd_search.engine import resolve_device

    args = parse_args(argv)
    resolve_device(args.device, "--device")  # a bad device is refused here, not in every trial
    check_trials(args)
    if args.cache_dir:
        args.cache_dir = str(output_dir(args.cache_dir, "--cache-dir"))
    with given_or_temp_dir(args.cache_dir, "ckd_packing_cache_") as cache_root:
        if not args.mps:
            return _run(args, cache_root)
        with private_mps(cache_root):
            return _run(args, cache_root)


def _run(args: argparse.Namespace, cache_root: str) -> int:
    # Spawned children inherit the environment: one shared compile cache for all packed trials.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache_root, "inductor")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(cache_root, "triton")
    cores = os.cpu_count() or 1
    lines = [f"# CKD trial packing (ckd_search.perf.packing){' [smoke]' if args.smoke else ''}"]
    if args.device.startswith("cuda"):
        lines.append(f"device: {torch.cuda.get_device_name(torch.device(args.device))}")
        lines.append(f"sharing: {gpu_sharing()}")
    else:
        lines.append(f"device: CPU, {cores} cores, load average {os.getloadavg()[0]:.2f}")
    compiled = f"true ({args.compile_mode})" if args.compile else "false"
    lines.append(
        f"per trial: B={args.batch} pairs, T={args.timesteps}, {args.size}x{args.size}, width "
        f"{args.width:g}, C={args.classes}, run.precision={args.precision}, run.compile={compiled}, "
        f"channels_last={str(not args.no_channels_last).lower()}; RANDOM inputs (throughput only)"
    )
    timed = (
        f"whole trials of {args.epochs} epochs (engine.fit on {args.train_samples} / {args.test_samples} "
        "samples, eval and checkpoint every epoch; ms/step = trial time / train steps)"
        if args.epochs
        else f"{args.steps} steps per trial"
    )
    lines.append(
        f"timing: {timed} after {args.warmup} warm-up steps, all trials started at a barrier; "
        f"compile caches under {cache_root}"
    )
    rows = []
    notes = []
    if args.epochs and args.compile:
        notes.append("--compile with --epochs: each trial's fit compiles again inside the clock (cache hits)")
    base: float | None = None
    for n in args.levels:
        spec = trial_spec(args, n)
        threads = spec.threads
        log.info("packing %d trial(s): %s", n, asdict(spec))
        frac = "-" if not args.device.startswith("cuda") else f"1/{n}"
        windows: list[Window] = []
        bad: list[dict[str, Any]] = []
        for _ in range(args.repeats):
            reports = run_packed(n, spec)
            bad = [r for r in reports if r.get("status") != "ok"]
            if bad:
                break
            windows.append(Window.of(reports, args.batch))
        if bad:
            status = "OOM" if all(r.get("status") == "OOM" for r in bad) else "error"
            for r in bad:
                if r.get("error"):
                    notes.append(f"{n} trial(s), rank {r['rank']}: {r['error'].strip().splitlines()[-1]}")
                    print(r["error"], file=sys.stderr)
            rows.append([str(n), status, "-", "-", "-", "-", "-", frac])
            print_row(rows[-1])
            continue
        aggregate = statistics.median(w.aggregate for w in windows)
        spread = f"{fmt(min(w.aggregate for w in windows))}-{fmt(max(w.aggregate for w in windows))}"
        peaks = [w.peak_gib for w in windows if w.peak_gib is not None]
        base = base if base is not None else (aggregate if n == args.levels[0] else None)
        speedup = aggregate / base if base else None
        rows.append(
            [
                str(n),
                fmt(aggregate),
                spread if len(windows) > 1 else "-",
                fmt(aggregate / n),  # each trial's share of the common span, not its own window's rate
                fmt(statistics.median(w.ms_step for w in windows), 1),
                fmt(speedup, 2),
                fmt(max(peaks) if peaks else None, 2),
                frac,
            ]
        )
        if not args.device.startswith("cuda"):
            notes.append(f"{n} trial(s): {threads} torch thread(s) each")
        print_row(rows[-1])
    print("\n".join(lines))
    print()
    print(format_table(COLUMNS, rows))
    print()
    if args.levels[0] != 1:
        print("note: speedup is relative to the first level run, not to 1 trial")
    for note in notes:
        print(f"note: {note}")
    return 1 if any(r[1] == "error" for r in rows) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
