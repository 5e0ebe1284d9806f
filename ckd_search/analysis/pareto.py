"""Pareto fronts of multi-objective searches: dominance and the front of a set of points.

Shared by ``ckd-search export`` (``pareto.json``) and ``ckd-search analyze`` (the Pareto figure), so
both name the same trials. A point is a list of objective values; ``modes`` says per objective
whether larger (``max``) or smaller (``min``) is better. A point with a missing or non-finite value
is never on the front and never dominates another (Optuna records such a trial as FAIL).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ckd_search.search.outcome import finite


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when ``a`` is at least as good as ``b`` everywhere and better somewhere (larger is better)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def pareto_mask(points: Sequence[Sequence[Any]], modes: Sequence[str]) -> list[bool]:
    """For each point, whether no other point dominates it; equal points are all on the front."""
    signs = [1.0 if m == "max" else -1.0 for m in modes]
    oriented: list[list[float] | None] = []
    for point in points:
        values = [finite(v) for v in point]
        ok = len(values) == len(signs) and all(v is not None for v in values)
        oriented.append([s * float(v) for s, v in zip(signs, values)] if ok else None)  # type: ignore[arg-type]
    valid = [p for p in oriented if p is not None]
    return [p is not None and not any(dominates(q, p) for q in valid) for p in oriented]
