"""Pareto fronts without a search: the dominance rule shared by export and analyze, and the report's
Pareto section on a run directory that holds only ``export/trials.parquet`` and ``space.yaml``."""

from __future__ import annotations

import math

import pytest

from ckd_search.analysis.pareto import pareto_mask


@pytest.mark.parametrize(
    ("points", "modes", "front"),
    [
        # accuracy (max) vs operations (min): the cheap weak and the costly strong trial both count
        ([[0.9, 100.0], [0.5, 10.0], [0.4, 50.0], [0.9, 200.0]], ["max", "min"], [True, True, False, False]),
        ([[1.0, 1.0], [1.0, 1.0], [0.0, 2.0]], ["max", "max"], [True, True, True]),  # equal points
        ([[1.0, 1.0], [1.0, 1.0], [0.5, 0.5]], ["min", "min"], [False, False, True]),
        ([[0.2], [0.7], [0.7]], ["max"], [False, True, True]),  # one objective: the best (ties)
        (
            [[math.nan, 0.0], [None, 0.0], [0.1, 5.0], [0.0, math.inf]],
            ["max", "min"],
            [False, False, True, False],
        ),
        ([], ["max", "min"], []),
    ],
)
def test_pareto_mask(points, modes, front):
    assert pareto_mask(points, modes) == front
