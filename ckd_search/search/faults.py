"""Trial faults: which errors are final, their one-line messages, and a test-only injection hook.

Final errors. Ray Tune retries every failed trial up to ``FailureConfig(max_failures)`` times (-1 =
forever), from its latest checkpoint. That is right for a lost node or a CUDA out-of-memory error
(the retry may land on a card with room), but a :class:`ckd_search.errors.TrialFailure` (non-finite
loss, ...) is deterministic: the retry resumes from the last checkpoint and fails at the same epoch
again, forever with ``max_failures: -1``. Tune has no notion of a non-retryable error, so
:func:`install_failure_policy` wraps two methods of Tune's driver-side ``Trial`` (``handle_error``
and ``should_recover``, both in Ray 2.60): a trial whose error is a TrialFailure is not recovered
and ends as ERROR at once, and so does a ``UserError`` raised inside a trial (bad input met there,
e.g. a data set that cannot be read); every other error keeps Tune's policy. Each trial's last error is kept
as one line (:func:`last_error`) for the Optuna record (user attribute ``error``), the MLflow run
(tag ``ckd.error``) and the progress log.

Fault injection (tests and ``make soak`` only). ``CKD_SEARCH_FAULT_INJECT`` holds comma-separated
``KIND:TRIAL:EPOCH[:ARG]`` specs read by the trainable at the end of each epoch, before the epoch
is reported (so its checkpoint is not registered yet):

- ``KIND``: ``oom`` raises ``torch.OutOfMemoryError('CUDA out of memory ...')``; ``crash`` raises
  ``RuntimeError``; ``exit`` ends the worker process (``os._exit``, like a killed process); ``delay``
  sleeps ``ARG`` seconds (stretches trials without using CPU, so a node can die mid-trial);
- ``TRIAL``: the trial's index in creation order, from 0 (Tune's experiment tag minus one), or ``*``;
- ``EPOCH``: the 1-based epoch, or ``*``;
- ``ARG``: for oom/crash/exit how many times the fault fires for that trial and epoch (default 1,
  counted in marker files under ``CKD_SEARCH_FAULT_DIR``, default ``$TMPDIR/ckd_search-faults-UID``,
  so a retried trial does not fail again); for delay the seconds (default 1).

Example: ``CKD_SEARCH_FAULT_INJECT="oom:1:2"`` makes trial 1 run out of memory once at epoch 2; Tune
retries it from its epoch-1 checkpoint (``study.max_failures`` permitting).

A lost latest checkpoint after a driver crash (:class:`CheckpointRepair`). Tune writes its experiment
snapshot and uploads it to storage in a background thread (an upload still running when the next
snapshot is due is skipped), but deletes a trial's checkpoints beyond ``num_to_keep`` at once, on
the driver thread. On a loaded machine the stored snapshot can lag so far that its latest checkpoint
of a trial is already deleted; after a driver crash Ray then fails that trial on every retry ("Could
not recover from checkpoint as it does not exist on storage anymore"). Before a resumed experiment
starts its trials, :class:`CheckpointRepair` points such a trial at the oldest of its checkpoints
that is newer than the lost one (or at none: it starts again). That one is safe to resume from:
checkpoints are deleted oldest first, once ``num_to_keep`` newer ones were registered, so the
driver had processed its epoch (the epoch ledger, Optuna and MLflow have it); a newer checkpoint
may be one whose result no driver processed.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback

log = logging.getLogger(__name__)
FAULT_ENV = "CKD_SEARCH_FAULT_INJECT"
FAULT_DIR_ENV = "CKD_SEARCH_FAULT_DIR"
FAULT_KINDS = ("oom", "crash", "exit", "delay")
#: Error classes (or base classes) that end a trial for good: a retry would fail the same way.
#: ``UserError`` covers bad input met inside a trial (ConfigError, DataError).
FINAL_ERRORS = ("TrialFailure", "UserError")
_LAST_ERRORS: dict[str, str] = {}
_FINAL: set[str] = set()


# --- final errors (driver side) ----------------------------------------------------------------
def install_failure_policy() -> bool:
    """Make Tune end trials that raised a :data:`FINAL_ERRORS` error without retrying them.

    Idempotent; returns False (and Tune retries everything, its default) when this Ray's ``Trial``
    lacks the two methods it wraps.
    """
    from ray.tune.experiment.trial import Trial

    if getattr(Trial, "_ckd_failure_policy", False):
        return True
    handle = getattr(Trial, "handle_error", None)
    recover = getattr(Trial, "should_recover", None)
    if handle is None or recover is None:
        log.warning("this Ray's Trial has no handle_error/should_recover: TrialFailure will be retried")
        return False

    def handle_error(self: Any, exc: Any = None) -> None:
        handle(self, exc)
        _LAST_ERRORS[self.trial_id] = error_line(exc)
        if is_final(exc):
            _FINAL.add(self.trial_id)
        else:
            _FINAL.discard(self.trial_id)

    def should_recover(self: Any) -> bool:
        if self.trial_id in _FINAL:
            return False
        return bool(recover(self))

    Trial.handle_error = handle_error  # type: ignore[method-assign]
    Trial.should_recover = should_recover  # type: ignore[method-assign]
    Trial._ckd_failure_policy = True  # type: ignore[attr-defined]
    return True


def _chain(exc: BaseException | None) -> list[BaseException]:
    """``exc``, the exception it wraps (Ray's ``cause``) and their ``__cause__``/``__context__``."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen) or len(seen) > 16:
            continue
        seen.append(e)
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return seen


def root_cause(exc: BaseException | None) -> BaseException | None:
    """The user exception inside Ray's wrappers (``RayTaskError.cause``), else ``exc``."""
    chain = _chain(exc)
    for e in chain:
        if not type(e).__module__.startswith("ray."):
            return e
    return chain[-1] if chain else None


def is_final(exc: BaseException | None) -> bool:
    """True when ``exc`` is (or wraps) a :data:`FINAL_ERRORS` error."""
    for e in _chain(exc):
        if any(c.__name__ in FINAL_ERRORS for c in type(e).__mro__):
            return True
    text = str(exc or "")
    return any(f"{name}:" in text for name in FINAL_ERRORS)


def error_line(exc: BaseException | None, limit: int = 400) -> str:
    """``Type: message`` of the root cause, on one line."""
    cause = root_cause(exc)
    if cause is None:
        return "unknown error"
    text = " ".join(f"{type(cause).__name__}: {cause}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def last_error(trial_id: str) -> str | None:
    """One line describing the last error of ``trial_id`` (driver side), if any."""
    return _LAST_ERRORS.get(trial_id)


def is_final_trial(trial_id: str) -> bool:
    return trial_id in _FINAL


# --- fault injection (trainable side) ----------------------------------------------------------
@dataclass(frozen=True)
class Fault:
    kind: str
    trial: int | None
    epoch: int | None
    arg: float
    spec: str

    def matches(self, trial_index: int | None, epoch: int) -> bool:
        return (self.trial is None or self.trial == trial_index) and (
            self.epoch is None or self.epoch == epoch
        )


def parse_faults(text: str | None) -> list[Fault]:
    """Parse ``CKD_SEARCH_FAULT_INJECT``; a malformed spec raises ValueError naming it."""
    faults = []
    for raw in (text or "").split(","):
        spec = raw.strip()
        if not spec:
            continue
        parts = spec.split(":")
        if len(parts) not in (3, 4) or parts[0] not in FAULT_KINDS:
            raise ValueError(
                f"{FAULT_ENV}: {spec!r} is not KIND:TRIAL:EPOCH[:ARG] with KIND in {', '.join(FAULT_KINDS)}"
            )
        try:
            trial = None if parts[1] == "*" else int(parts[1])
            epoch = None if parts[2] == "*" else int(parts[2])
            arg = float(parts[3]) if len(parts) == 4 else 1.0
        except ValueError:
            raise ValueError(f"{FAULT_ENV}: {spec!r}: TRIAL and EPOCH are integers or *") from None
        faults.append(Fault(parts[0], trial, epoch, arg, spec))
    return faults


def fault_dir() -> Path:
    default = Path(tempfile.gettempdir()) / f"ckd_search-faults-{os.getuid()}"
    return Path(os.environ.get(FAULT_DIR_ENV) or default)


def inject(experiment: str, trial_id: str, trial_index: int | None, epoch: int) -> None:
    """Fire the faults of ``CKD_SEARCH_FAULT_INJECT`` that match this trial and epoch."""
    text = os.environ.get(FAULT_ENV)
    if not text:
        return
    for number, fault in enumerate(parse_faults(text)):
        if not fault.matches(trial_index, epoch):
            continue
        if fault.kind == "delay":
            time.sleep(fault.arg)
            continue
        marker = fault_dir() / f"{experiment}-{trial_id}-f{number}-e{epoch}"
        marker.parent.mkdir(parents=True, exist_ok=True)
        fired = len(marker.read_text().splitlines()) if marker.is_file() else 0
        if fired >= fault.arg:
            continue
        with open(marker, "a") as fh:
            fh.write(f"{time.time()}\n")
        where = f"trial {trial_index} ({trial_id}) epoch {epoch}, injected by {FAULT_ENV}={fault.spec}"
        log.warning("fault injection: %s at %s", fault.kind, where)
        if fault.kind == "oom":
            import torch

            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB (simulated: {where})"
            )
        if fault.kind == "crash":
            raise RuntimeError(f"simulated crash: {where}")
        if fault.kind == "exit":
            os._exit(17)


def trial_index(trial_name: str | None) -> int | None:
    """The creation index encoded in a trial name by :func:`ckd_search.search.tuner.trial_name`."""
    if not trial_name:
        return None
    parts = trial_name.split("_")
    if len(parts) == 3 and parts[0] == "trial" and parts[2].isdigit():
        return int(parts[2])
    return None


# --- a latest checkpoint lost with the driver (driver side) ------------------------------------
class CheckpointRepair(Callback):
    """At the first step of a (resumed) experiment, repair trials whose latest checkpoint is gone."""

    def __init__(self) -> None:
        self._checked = False

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self._checked:
            return
        self._checked = True  # Tune starts trials after this hook, in the same step
        for trial in trials:
            if trial.status in ("PENDING", "PAUSED"):
                repair_checkpoint(trial)


def repair_checkpoint(trial: Any) -> bool:
    """Point ``trial`` at its oldest checkpoint newer than a lost latest one; True when changed.

    Uses Ray 2.60's per-trial checkpoint manager; with another layout it logs and changes nothing.
    """
    try:
        manager = trial.run_metadata.checkpoint_manager
        latest = manager.latest_checkpoint_result
        if latest is None or _exists(latest.checkpoint):
            return False
        lost = latest.checkpoint
        replacement = _next_checkpoint(lost)
        manager._checkpoint_results = [r for r in manager._checkpoint_results if _exists(r.checkpoint)]
        if replacement is None:
            manager._latest_checkpoint_result = None
            log.warning(
                "trial %s: its latest checkpoint %s was deleted after the last stored snapshot and no "
                "newer one exists; it starts again from epoch 1",
                trial.trial_id,
                lost.path,
            )
            return True
        # Latest only, not in the kept list: the trial's next checkpoint may reuse that folder name
        # (Tune numbers them from the snapshot), and a kept duplicate would get the folder deleted.
        manager._latest_checkpoint_result = type(latest)(checkpoint=replacement, metrics=dict(latest.metrics))
    except Exception as err:  # noqa: BLE001 - Ray internals changed: Tune's own handling applies
        log.warning("trial %s: could not check its latest checkpoint (%s)", trial.trial_id, error_line(err))
        return False
    log.warning(
        "trial %s: its latest checkpoint %s was deleted after the last stored snapshot; resuming from "
        "the next one, %s",
        trial.trial_id,
        lost.path,
        replacement.path,
    )
    return True


def _exists(checkpoint: Any) -> bool:
    import pyarrow.fs as pafs

    return checkpoint.filesystem.get_file_info(checkpoint.path).type != pafs.FileType.NotFound


def checkpoint_name(checkpoint: Any) -> str:
    """The ``checkpoint_NNNNNN`` folder name of a Tune checkpoint (names sort by age)."""
    return str(checkpoint.path).rstrip("/").rpartition("/")[2]


def sibling_checkpoints(checkpoint: Any) -> list[Any]:
    """Every ``checkpoint_NNNNNN`` folder of the trial beside ``checkpoint`` (itself too), oldest first."""
    import pyarrow.fs as pafs
    from ray import tune

    parent = str(checkpoint.path).rstrip("/").rpartition("/")[0]
    infos = checkpoint.filesystem.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    names = sorted(
        i.base_name
        for i in infos
        if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")
    )
    return [tune.Checkpoint(f"{parent}/{n}", filesystem=checkpoint.filesystem) for n in names]


def _next_checkpoint(lost: Any) -> Any:
    """The oldest ``checkpoint_NNNNNN`` folder beside ``lost`` that is newer than it, or None."""
    name = checkpoint_name(lost)
    return next((c for c in sibling_checkpoints(lost) if checkpoint_name(c) > name), None)
