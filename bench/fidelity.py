"""Fidelity modes on Digits-DVS (CPU): Spearman rho between low- and full-budget results.

N configs of (kd.e_th, kd.k log-uniform, loss.beta) are drawn with a fixed seed; each is trained at
the full budget (E epochs) and at a low budget (L epochs) in both modes (truncate, compress); see
ckd_search.analysis.fidelity. Cost: N * S * (E + 2 L) epochs for S training seeds (about 2 s each at
the defaults, 1 thread).

    python bench/fidelity.py --out runs/fidelity/fidelity.json
    python bench/fidelity.py --n 12 --train-seeds 42 1024 90210   # with seed noise and its ceiling
    python bench/fidelity.py --n 4 --full-epochs 4 --low-epochs 1 --set data.limit=300   # quick
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

# Run from a checkout: put the repository root first so this tree's ckd_search is imported.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ckd_search.analysis.fidelity import fidelity_study  # noqa: E402
from ckd_search.analysis.fidelity import format_table  # noqa: E402
from ckd_search.analysis.fidelity import write_fidelity  # noqa: E402
from ckd_search.argtypes import OneLineParser  # noqa: E402
from ckd_search.cli import parse_overrides  # noqa: E402
from ckd_search.config import Config  # noqa: E402

SMALL = {
    "data.dataset": "digits_dvs",
    "data.size": 16,
    "data.timesteps": 4,
    "model.width": 0.0625,
    "run.device": "cpu",
}


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8, help="configs drawn (default 8)")
    p.add_argument("--full-epochs", type=int, default=12, help="full budget E (default 12)")
    p.add_argument("--low-epochs", type=int, default=3, help="low budget (default 3 = E/4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the config draws")
    p.add_argument(
        "--train-seeds",
        type=int,
        nargs="+",
        default=None,
        help="training seeds (values averaged)",
    )
    p.add_argument("--metric", default="best_test_acc", choices=["best_test_acc", "final_test_acc"])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--cache-dir", default=None, help="data/teacher cache (default: the config's)")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", default=None, help="base config overrides")
    p.add_argument("--out", default="runs/fidelity/fidelity.json", help="JSON output file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    values = {**SMALL, "run.threads": args.threads, **parse_overrides(args.set)}
    if args.cache_dir:
        values["data.cache_dir"] = args.cache_dir
    base = Config.from_dict(values)
    start = time.perf_counter()
    result = fidelity_study(
        base,
        n_configs=args.n,
        full_epochs=args.full_epochs,
        low_epochs=args.low_epochs,
        seed=args.seed,
        train_seeds=args.train_seeds,
        metric=args.metric,
        progress=lambda line: print(line, flush=True),
    )
    print(format_table(result))
    path = write_fidelity(args.out, result)
    print(f"wrote {path} ({time.perf_counter() - start:.0f} s; machine {json.dumps(result['machine'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
