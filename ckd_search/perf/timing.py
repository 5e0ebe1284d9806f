"""Device-aware step timing, peak memory and the plain-text tables every benchmark prints."""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ckd_search.argtypes import non_negative_int
from ckd_search.argtypes import positive_float
from ckd_search.argtypes import positive_int

# The tiny CPU setting every benchmark's --smoke mode uses (CI): B 8, T 2, 16x16, width 1/16.
SMOKE_SHAPE: dict[str, object] = {
    "batch": 8,
    "timesteps": 2,
    "size": 16,
    "width": 0.0625,
    "classes": 10,
    "steps": 3,
    "warmup": 1,
    "device": "cpu",
}


@dataclass(frozen=True)
class Timing:
    """Per-step times of one timed run.

    Attributes:
        times_ms: wall time of each timed step in milliseconds (CUDA events on a GPU).
        warmup_s: seconds spent in the untimed warm-up steps (compilation, autotuning, caches).
        peak_gib: ``torch.cuda.max_memory_allocated`` over warm-up and timed steps; None on a CPU.
    """

    times_ms: list[float]
    warmup_s: float
    peak_gib: float | None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    def per_second(self, items_per_step: int) -> float:
        """Throughput from the median step time (robust to the odd slow step)."""
        return items_per_step * 1e3 / self.median_ms


def add_shape_args(p: argparse.ArgumentParser, *, batch: int, steps: int, per: str = "") -> None:
    """The step-shape flags the step and packing benches share; None means the bench's default
    (the full-size shape, or :data:`SMOKE_SHAPE` with --smoke). ``per``: e.g. " per trial"."""
    p.add_argument("--batch", type=positive_int, help=f"pairs per step{per} (default {batch}; smoke 8)")
    p.add_argument("--timesteps", type=positive_int, help="T (default 10; smoke 2)")
    p.add_argument("--size", type=positive_int, help="input size S (default 48; smoke 16)")
    p.add_argument("--width", type=positive_float, help="channel multiplier (default 1.0; smoke 0.0625)")
    p.add_argument("--classes", type=positive_int, help="classes C (default 101; smoke 10)")
    p.add_argument("--steps", type=positive_int, help=f"timed steps{per} (default {steps}; smoke 3)")
    p.add_argument("--warmup", type=non_negative_int, help=f"untimed steps first{per} (default 5; smoke 1)")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Free what earlier runs left behind and restart the peak-memory counter."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def time_steps(step: Callable[[int], object], *, steps: int, warmup: int, device: torch.device) -> Timing:
    """Call ``step(i)`` ``warmup`` times untimed, then ``steps`` times timed.

    On CUDA each step sits between two recorded events and the host synchronises once at the end,
    so the host never stalls the queue between steps (a per-step ``synchronize`` would hide the
    launch overlap that a real training loop gets). On a CPU ``perf_counter`` is exact.

    Args:
        step: one training step; ``i`` counts from 0 over warm-up and timed calls.
        steps: timed calls (>= 1).
        warmup: untimed calls first.
        device: where the step runs.

    Returns:
        The per-step times, the warm-up seconds and the peak memory.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    start = time.perf_counter()
    for i in range(warmup):
        step(i)
    synchronize(device)
    warmup_s = time.perf_counter() - start
    times: list[float] = []
    if device.type == "cuda":
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)
        ]
        for i, (begin, end) in enumerate(events):
            begin.record()
            step(warmup + i)
            end.record()
        synchronize(device)
        times = [begin.elapsed_time(end) for begin, end in events]
    else:
        for i in range(steps):
            t0 = time.perf_counter()
            step(warmup + i)
            times.append((time.perf_counter() - t0) * 1e3)
    return Timing(times_ms=times, warmup_s=warmup_s, peak_gib=peak_gib(device))


def print_row(cells: Sequence[str]) -> None:
    """A table row on stderr as soon as it is measured: a bench cut off by its time limit still
    leaves the rows it finished (the whole table is printed at the end)."""
    print("row " + " | ".join(cells), file=sys.stderr, flush=True)


def fmt(value: float | None, digits: int = 1) -> str:
    """A table cell: ``-`` for missing values, fixed decimals otherwise."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def format_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (pipes, one header rule): readable in a terminal and easy to parse."""
    widths = [len(c) for c in columns]
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"row {row!r} has {len(row)} cells, expected {len(columns)}")
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]

    def line(cells: Sequence[str]) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), rule, *(line(r) for r in rows)])


def parse_tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table in ``text``, each as a list of rows keyed by its header (for tests)."""
    tables: list[list[dict[str, str]]] = []
    lines = [ln.strip() for ln in text.splitlines()]
    i = 0
    while i < len(lines):
        if not (lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|-")):
            i += 1
            continue
        header = [c.strip() for c in lines[i].strip("|").split("|")]
        rows = []
        i += 2
        while i < len(lines) and lines[i].startswith("|"):
            rows.append(dict(zip(header, (c.strip() for c in lines[i].strip("|").split("|")))))
            i += 1
        tables.append(rows)
    return tables


def cell_number(cell: str) -> float:
    """A numeric table cell back to a float (``1,234.5`` -> 1234.5); ValueError otherwise."""
    return float(cell.replace(",", ""))
