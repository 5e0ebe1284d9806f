"""The cap on trials at once, taken from the cluster the search runs on now, on resume too.

Tune's ``max_concurrent_trials`` wraps the searcher in a ``ConcurrencyLimiter`` that is pickled into
``tuner.pkl`` and whose saved state (cap included) is put back by ``Tuner.restore``: a search resumed
on a smaller cluster would keep asking its old number of trials at once, most of them sampled before
any result is back (pitfall 2), and one resumed on a larger cluster would leave the new GPUs idle.
:class:`ResizableLimiter` reads the cap from a file in the run directory instead, which
``run_search`` writes from the current plan before every start and resume, and reads it again
whenever Tune restores the limiter (unpickling, ``set_state``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ray.tune.search import ConcurrencyLimiter
from ray.tune.search import Searcher

from ckd_search.storage import atomic_write_text
from ckd_search.storage import read_json_object

log = logging.getLogger(__name__)


def write_cap(path: str | Path, max_concurrent: int) -> None:
    atomic_write_text(path, json.dumps({"max_concurrent": int(max_concurrent)}) + "\n")


def read_cap(path: str | Path) -> int | None:
    """The cap in ``path``; None when the file is missing or unreadable (the limiter keeps its own)."""
    cap = (read_json_object(Path(path)) or {}).get("max_concurrent")
    return cap if isinstance(cap, int) and cap > 0 else None


class ResizableLimiter(ConcurrencyLimiter):
    """A ``ConcurrencyLimiter`` whose cap is the one in ``cap_file`` whenever Tune restores it."""

    def __init__(self, searcher: Searcher, max_concurrent: int, cap_file: str | Path) -> None:
        self.cap_file = str(cap_file)
        super().__init__(searcher, max_concurrent=max_concurrent)

    def set_state(self, state: dict) -> None:  # Tune's saved searcher state, last on a restore
        super().set_state(state)
        self._follow_cap(logging.INFO)

    def __setstate__(self, state: dict[str, Any]) -> None:  # tuner.pkl, first on a restore
        self.__dict__.update(state)
        self._follow_cap(logging.DEBUG)

    def _follow_cap(self, level: int) -> None:
        cap = read_cap(self.cap_file)
        if cap is not None and cap != self.max_concurrent:
            before = self.max_concurrent
            log.log(level, "up to %d trials at once (the search ran up to %d before)", cap, before)
            self.max_concurrent = cap
