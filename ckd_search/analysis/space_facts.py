"""What a run's ``space.yaml`` says that its trial table cannot: the study's objectives, which
parameters were drawn on a log scale, which act only under a condition, and ASHA's ``max_t``.

The space is read with the overrides the search was started with (``search.yaml``), as the search
read it. A run without a readable space (a bare trial table, a space that no longer validates) keeps
the engine's own facts: ``kd.k`` and the optimiser's rates on a log scale, ``kd.e_th`` acting in the
phased schedule only, ``kd.p_th`` in the adaptive one; a note says the space was not read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from ckd_search.errors import UserError
from ckd_search.search.settings import SPACE_FILE
from ckd_search.search.settings import SearchSettings

#: Parameters read on a log scale in any run (when positive), whatever its space says.
LOG_PARAMS = frozenset({"kd.k", "optim.lr", "optim.weight_decay", "optim.min_lr"})

#: A condition: (the key that switches a parameter on, the values under which it acts).
Condition = tuple[str, frozenset[Any]]

#: Conditions the engine itself sets: the switch point and steepness act only in their schedules.
ENGINE_CONDITIONS: dict[str, tuple[Condition, ...]] = {
    "kd.e_th": (("kd.schedule", frozenset({"phased"})),),
    "kd.p_th": (("kd.schedule", frozenset({"adaptive"})),),
    "kd.k": (("kd.schedule", frozenset({"phased", "adaptive"})),),
}


@dataclass(frozen=True)
class SpaceFacts:
    objectives: tuple[tuple[str, str], ...] = ()
    log_params: frozenset[str] = LOG_PARAMS
    conditions: Mapping[str, tuple[Condition, ...]] = field(default_factory=lambda: dict(ENGINE_CONDITIONS))
    max_t: int | None = None
    read: bool = False  # False: no space file was read, the fields are the engine's defaults

    @property
    def epoch_cap(self) -> float | None:
        """Epochs past which no trial trains (ASHA's max_t, else none); None when not known."""
        return (self.max_t or math.inf) if self.read else None


def read_space_facts(run_dir: str | Path, notes: list[str] | None = None) -> SpaceFacts:
    """The facts of ``RUN_DIR/space.yaml`` (engine defaults when there is none or it does not load)."""
    from ckd_search.search.space import load_space

    root = Path(run_dir)
    path = root / SPACE_FILE
    if not path.is_file():
        return SpaceFacts()
    try:
        space = load_space(path, _overrides(root))
    except UserError as err:
        if notes is not None:
            notes.append(
                f"{SPACE_FILE} not read ({err}): trials ranked by best test top-1, log scales and "
                "conditions as the engine defines them"
            )
        return SpaceFacts()
    conditions = {key: list(found) for key, found in ENGINE_CONDITIONS.items()}
    for param in space.params:
        for switch, values in param.condition:
            conditions.setdefault(param.key, []).append((switch, frozenset(values)))
    logs = {p.key for p in space.params if p.log or p.type == "loguniform"}
    return SpaceFacts(
        objectives=tuple(zip(space.study.metrics, space.study.modes)),
        log_params=LOG_PARAMS | logs,
        conditions={key: tuple(found) for key, found in conditions.items()},
        max_t=space.scheduler.max_t if space.scheduler else None,
        read=True,
    )


def _overrides(root: Path) -> dict[str, Any]:
    """The ``--set`` overrides the search was started with (none without a readable search.yaml)."""
    try:
        settings = SearchSettings.raw(root)
    except UserError:
        return {}
    overrides = settings.get("overrides")
    return dict(overrides) if isinstance(overrides, Mapping) else {}
