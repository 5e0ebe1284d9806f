"""Imports the driver will need, read from disk ahead of time while it waits for something else.

Cold, the driver's imports cost seconds of disk reads on a small machine (5-15 s for the report's
on a 2-core VM), all on the critical path of ``ckd-search demo``. Two waits can hide them:

- Ray's processes starting (:func:`importing` around ``ray.init``): torch and the engine.
- The trials training (:class:`ImportAhead`, from the first trial start): what the export and the
  report import afterwards.

The imports run in a child process, so what they warm is the page cache (the files, the shared
libraries and the bytecode), never this interpreter: an import thread shares the interpreter's
module locks with the main thread, and when both import a common module (``email`` under
``importlib.metadata``, say) Python may break the wait with a deadlock error. That left
spikingjelly half-imported in a resumed driver (``functional`` without ``lif_multi_step``, CI,
session 9). The driver then imports the modules itself, from a warm cache.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

from ray.tune import Callback

log = logging.getLogger(__name__)

# What prepare_all imports after ray.init (the engine, data, teacher, descriptors).
ENGINE_MODULES = ("ckd_search.engine", "ckd_search.analysis.descriptors")
# What export_run and analyze_runs import (directly or lazily) beyond what the search loads.
REPORT_MODULES = (
    "ckd_search.analysis.report",
    "ckd_search.analysis.tracking",
    "matplotlib.cm",
    "matplotlib.colors",
    "optuna.importance",
    "pyarrow.parquet",
)

# The child: import each module; a failure is only a missed head start (the real import reports it).
_CHILD = """
import importlib, sys
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as err:
        print(f"{name}: {err}", file=sys.stderr)
"""


def start_importing(modules: Sequence[str]) -> subprocess.Popen[bytes] | None:
    """A started child process importing ``modules`` (None when it cannot be started)."""
    try:
        return subprocess.Popen(
            [sys.executable, "-c", _CHILD, *modules],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError as err:
        log.debug("import ahead of %s not started: %s", ", ".join(modules), err)
        return None


@contextmanager
def importing(modules: Sequence[str]) -> Iterator[None]:
    """Read ``modules`` from disk in a child process while the block runs.

    The block's end does not wait for the child: the driver's own imports read what it has cached
    so far, and the child is reaped when it ends (or stopped with the driver).
    """
    child = start_importing(modules)
    try:
        yield
    finally:
        if child is not None and child.poll() is None:
            _reap_later(child)


_PENDING: list[subprocess.Popen[bytes]] = []


def _reap_later(child: subprocess.Popen[bytes]) -> None:
    """Keep a running child to be waited for later, so it never lingers as a zombie."""
    _PENDING[:] = [c for c in _PENDING if c.poll() is None]
    _PENDING.append(child)


class ImportAhead(Callback):
    """At the first trial start, read ``modules`` from disk in a child process (once per driver)."""

    def __init__(self, modules: Sequence[str] = REPORT_MODULES) -> None:
        self.modules = tuple(modules)
        self.started = False
        self.child: subprocess.Popen[bytes] | None = None

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not self.started:
            self.started = True
            self.child = start_importing(self.modules)
            if self.child is not None:
                _reap_later(self.child)

    def __getstate__(self) -> dict[str, Any]:  # Tune snapshots its callbacks: a process does not pickle
        return {"modules": self.modules, "started": False, "child": None}
