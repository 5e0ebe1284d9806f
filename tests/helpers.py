"""Plain helpers shared by test modules (fixtures live in the conftest files)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


def edited_copy(raw: Mapping[str, Any], path: str, value: Any = None, delete: bool = False) -> dict[str, Any]:
    """A deep copy of ``raw`` with the nested key ``a/b/c`` set to ``value`` (or deleted)."""
    out = copy.deepcopy(dict(raw))
    node = out
    parts = path.split("/")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if delete:
        node.pop(parts[-1])
    else:
        node[parts[-1]] = value
    return out


def two_key_space(folder: Path, fixed: Mapping[str, Any], name: str = "space.yaml", **sections: Any) -> Path:
    """A search-space file under ``folder``: two searched keys (loss.beta, kd.temperature), CPU
    trials; each keyword replaces its whole section (``study={...}``, ``scheduler={...}``)."""
    raw: dict[str, Any] = {
        "study": {"name": "t", "metric": "train_loss", "mode": "min", "num_trials": 3, "seed": 0},
        "fixed": dict(fixed),
        "space": {
            "loss.beta": {"type": "uniform", "low": 0.0, "high": 4.0},
            "kd.temperature": {"type": "choice", "values": [2.0, 4.0]},
        },
        "resources": {"cpu": 1, "gpu": 0},
    }
    raw.update(sections)
    path = folder / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path
