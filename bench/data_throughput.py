"""Data-layer throughput: Digits-DVS cache build (cold), cache load, BatchSource batches/s and pairs/s.

    python bench/data_throughput.py            # full Digits-DVS, T=6, S=32, batch 64, CPU
    python bench/data_throughput.py --smoke    # 200 samples per split, a few batches (CI)

Every figure is a measurement on this machine; nothing is asserted. The cache lives in a fresh
temporary folder, so the build is always cold.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run from a checkout: put the repository root first so this tree's ckd_search is imported.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ckd_search.argtypes import OneLineParser  # noqa: E402
from ckd_search.config import Config  # noqa: E402
from ckd_search.data import BatchSource  # noqa: E402
from ckd_search.data import load_paired  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="200 samples per split, 3 timed batches")
    p.add_argument("--timesteps", type=int, default=6)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2, help="timed passes over the train split")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: as is)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    import sklearn.datasets  # noqa: F401  (import cost kept out of the build figure)

    with tempfile.TemporaryDirectory(prefix="ckd-data-bench-") as cache_dir:
        values: dict[str, Any] = {
            "data.cache_dir": cache_dir,
            "data.timesteps": a.timesteps,
            "data.size": a.size,
        }
        if a.smoke:
            values["data.limit"] = 200
        cfg = Config.from_dict(values)
        start = time.perf_counter()
        data = load_paired(cfg.data, cfg.teacher.input_size)
        build_s = time.perf_counter() - start
        del data
        start = time.perf_counter()
        data = load_paired(cfg.data, cfg.teacher.input_size)
        load_s = time.perf_counter() - start
        device = torch.device(a.device)
        images = data.train.images.to(device)
        pair_index = data.train.pair_index.to(device)
        rows = {
            "machine": f"{torch.get_num_threads()} torch threads, device {device}",
            "samples": f"{len(data.train)} train / {len(data.test)} test",
            "cache_build_cold_s": round(build_s, 3),
            "cache_load_s": round(load_s, 3),
        }
        for name, aug in (("augmented", {"crop_padding": 4, "flip": True, "rotation": 15.0}), ("plain", {})):
            src = BatchSource(
                data.train.frames,
                data.train.labels,
                batch_size=a.batch_size,
                device=device,
                train=True,
                generator=torch.Generator().manual_seed(0),
                **aug,
            )  # type: ignore[arg-type]
            next(iter(src))  # warm-up (first-call allocations)
            batches = 0
            start = time.perf_counter()
            for _ in range(1 if a.smoke else a.epochs):
                for i, batch in enumerate(src):
                    paired = images.index_select(0, pair_index[batch.index])  # the RGB partners
                    batches += 1
                    if a.smoke and i >= 2:
                        break
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            rows[f"batches_per_s_{name}"] = round(batches / seconds, 1)
            rows[f"pairs_per_s_{name}"] = round(batches * a.batch_size / seconds, 1)
            del paired
        rows["batch"] = f"{a.batch_size} x [T={a.timesteps}, 2, {a.size}, {a.size}] float32"
        del data, images, pair_index
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        for key, value in rows.items():
            print(f"{key:<26} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
