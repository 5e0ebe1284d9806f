"""``ckd-search bench WHAT [--smoke] [ARGS...]``: the performance benchmarks of ``ckd_search.perf``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from collections.abc import Sequence

from ckd_search.errors import UserError


def _step(argv: Sequence[str]) -> int:
    from ckd_search.perf.step_bench import main

    return main(argv)


def _packing(argv: Sequence[str]) -> int:
    from ckd_search.perf.packing import main

    return main(argv)


def _epoch(argv: Sequence[str]) -> int:
    from ckd_search.perf.cpu_epoch import main

    return main(argv)


def _profile(argv: Sequence[str]) -> int:
    from ckd_search.perf.profile_step import main

    return main(argv)


BENCHES: dict[str, Callable[[Sequence[str]], int]] = {
    "step": _step,
    "packing": _packing,
    "epoch": _epoch,
    "profile": _profile,
}


def run_bench(args: argparse.Namespace) -> int:
    """Run benchmark ``args.what`` with ``args.rest`` as its own argv (plus ``--smoke``).

    argparse's REMAINDER may swallow ``--smoke`` into ``rest`` when it follows the benchmark
    name; either way it is passed on exactly once.
    """
    bench = BENCHES.get(args.what)
    if bench is None:
        raise UserError(f"unknown benchmark {args.what!r}; choose from {sorted(BENCHES)}")
    argv = [a for a in (args.rest or []) if a != "--"]
    if getattr(args, "smoke", False) and "--smoke" not in argv:
        argv.append("--smoke")
    return int(bench(argv) or 0)
