"""``ckd-search data build|inspect``: build a data set's frame cache or show what is in it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

from ckd_search.config import Config
from ckd_search.errors import UserError

_FLAGS = (
    ("dataset", "data.dataset"),
    ("root", "data.root"),
    ("timesteps", "data.timesteps"),
    ("size", "data.size"),
)


def run_data_command(args: argparse.Namespace) -> int:
    """Run ``data build`` or ``data inspect``; prints a table (or JSON with ``--json``).

    Raises:
        UserError: bad flags or config values; DataError (a UserError) for bad data on disk.
    """
    from ckd_search.config import check_local_paths
    from ckd_search.data.paired import load_paired

    cfg = config_from_args(args)
    check_local_paths(cfg)  # a --root that is no folder is refused, whatever the data set
    image_size = cfg.teacher.input_size
    if args.action not in ("build", "inspect"):
        raise UserError(f"data action {args.action!r}: expected build or inspect")
    start = time.perf_counter()
    data = load_paired(cfg.data, image_size)
    seconds = time.perf_counter() - start
    desc = data.descriptors
    if args.action == "build":
        report = {"status": "built" if desc["built"] else "cached", "seconds": round(seconds, 3), **desc}
        print(json.dumps(report, indent=2) if args.json else _build_table(report))
        return 0
    classes = [
        {"name": name, "train": desc["class_counts"]["train"][i], "test": desc["class_counts"]["test"][i]}
        for i, name in enumerate(data.class_names)
    ]
    report = {"classes": classes, "events_per_sample": desc["events_per_sample"], "descriptors": desc}
    print(json.dumps(report, indent=2) if args.json else _inspect_table(report))
    return 0


def config_from_args(args: argparse.Namespace) -> Config:
    """Config from ``--dataset/--root/--timesteps/--size`` and ``--set`` (``data.`` optional).

    ``--set`` wins over the flags: ``--dataset`` always has a value (its default), so an explicit
    ``--set dataset=...`` must be able to override it.
    """
    from ckd_search.cli import parse_overrides

    sections = {f.name for f in dataclasses.fields(Config)}
    values: dict[str, Any] = {}
    for attr, key in _FLAGS:
        value = getattr(args, attr, None)
        if value is not None:
            values[key] = value
    for key, value in parse_overrides(getattr(args, "set", None)).items():
        values[key if key.split(".", 1)[0] in sections else f"data.{key}"] = value
    return Config.from_dict(values)


def _build_table(r: dict[str, Any]) -> str:
    t, s, i = r["timesteps"], r["size"], r["image_size"]
    w, h = r["sensor_size"]
    rows = [
        ("data set", r["name"] + ("  [SYNTHETIC images]" if r["synthetic_images"] else "")),
        ("status", f"{r['status']} in {r['seconds']:.1f} s"),
        ("classes", r["classes"]),
        ("train / test", f"{r['train_samples']} / {r['test_samples']}"),
        ("frames", f"[N, {t}, 2, {s}, {s}] float16"),
        ("images", f"[M, 3, {i}, {i}] uint8"),
        ("events/sample", f"{r['mean_events_per_sample']:.0f} (mean)"),
        ("event density", f"{r['event_density']:.3f} events/pixel/sample"),
        ("sensor size", f"{w} x {h}"),
        ("source", r["source"]),
        ("cache", r["cache_files"]["train"]),
        ("", r["cache_files"]["test"]),
    ]
    return "\n".join(f"{k:<15} {v}" for k, v in rows)


def _inspect_table(r: dict[str, Any]) -> str:
    desc = r["descriptors"]
    width = max([5, *(len(c["name"]) for c in r["classes"])])
    lines = [
        f"{desc['name']}: {desc['classes']} classes, T={desc['timesteps']}, S={desc['size']}, "
        f"images {desc['image_size']}x{desc['image_size']}",
        "",
        f"{'class':<{width}} {'train':>7} {'test':>7}",
    ]
    lines += [f"{c['name']:<{width}} {c['train']:>7} {c['test']:>7}" for c in r["classes"]]
    lines += [
        f"{'total':<{width}} {desc['train_samples']:>7} {desc['test_samples']:>7}",
        "",
        f"{'events/sample':<13} {'mean':>10} {'std':>10} {'min':>10} {'median':>10} {'max':>10}",
    ]
    for split, st in r["events_per_sample"].items():
        lines.append(
            f"{split:<13} " + " ".join(f"{st[k]:>10.0f}" for k in ("mean", "std", "min", "median", "max"))
        )
    return "\n".join(lines)
