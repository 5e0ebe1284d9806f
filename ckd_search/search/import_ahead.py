"""Imports the driver will need, done in a thread while it waits for something else.

Cold, the driver's imports cost seconds of disk reads on a small machine (5-15 s for the report's
on a 2-core VM), all on the critical path of ``ckd-search demo``. Two waits can hide them:

- Ray's processes starting (:func:`importing` around ``ray.init``): torch and the engine, which
  import nothing of Ray, so the two threads never wait on each other's module locks.
- The trials training (:class:`ImportAhead`, from the first trial start, when the search's own
  imports are done): what the export and the report import afterwards.

A module that fails to import here is left to fail where it is really used.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

from ray.tune import Callback

log = logging.getLogger(__name__)

# What prepare_all imports after ray.init (the engine, data, teacher, descriptors); no Ray inside.
ENGINE_MODULES = ("ckd_search.engine", "ckd_search.analysis.descriptors")
# What export_run and analyze_runs import (directly or lazily) beyond what the search loads: no
# Ray or MLflow, which the driver's loop may be importing lazily at the same moment.
REPORT_MODULES = (
    "ckd_search.analysis.report",
    "ckd_search.analysis.tracking",
    "matplotlib.cm",
    "matplotlib.colors",
    "optuna.importance",
    "pyarrow.parquet",
)


def import_all(modules: Sequence[str]) -> list[str]:
    """Import ``modules`` in order; the names that failed (logged at debug level)."""
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - only a head start: the real import reports it
            log.debug("import ahead of %s failed: %s", name, err)
            failed.append(name)
    return failed


def start_importing(modules: Sequence[str]) -> threading.Thread:
    """A started daemon thread running :func:`import_all` over ``modules``."""
    thread = threading.Thread(target=import_all, args=(tuple(modules),), name="ckd-import-ahead", daemon=True)
    thread.start()
    return thread


@contextmanager
def importing(modules: Sequence[str]) -> Iterator[None]:
    """Import ``modules`` in a thread while the block runs; wait for it at the block's end."""
    thread = start_importing(modules)
    try:
        yield
    finally:
        thread.join()


class ImportAhead(Callback):
    """At the first trial start, import ``modules`` in a daemon thread (once per driver)."""

    def __init__(self, modules: Sequence[str] = REPORT_MODULES) -> None:
        self.modules = tuple(modules)
        self.thread: threading.Thread | None = None

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.thread is None:
            self.thread = start_importing(self.modules)

    def __getstate__(self) -> dict[str, Any]:  # Tune snapshots its callbacks: a thread does not pickle
        return {"modules": self.modules, "thread": None}
