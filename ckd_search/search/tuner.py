"""Run or resume a search: Ray Tune + Optuna (:mod:`.optuna_search`) + ASHA (:mod:`.asha`) + MLflow.

:func:`create_search` validates the space (and that the paths it names exist), makes the run
directory and saves the resolved settings; :func:`run_search` starts or joins Ray, prepares data
once per ``prepare_key`` on the driver, and runs (or, with ``resume=True``, ``Tuner.restore``-s) the
Tune experiment. The outcome is read back from the Optuna journal, which records every trial as
COMPLETE, PRUNED or FAIL.

Fault tolerance (what Ray Tune leaves to us):

- one driver per run directory: ``RUN_DIR/driver.lock`` is ``flock``-ed while a driver runs (the
  kernel drops it when the driver dies, even by SIGKILL);
- ``--resume`` first repairs what a killed driver can leave: a journal record cut off mid-write is
  removed, Optuna's journal lock file is removed (Optuna would wait 30 s for it), and a journal
  that cannot be parsed is refused with one line; a driver killed before Tune's first experiment
  snapshot is resumed by starting the Tune experiment again in the same study (trials asked by the
  lost driver are adopted, or run afresh when they had reported epochs, see :mod:`.optuna_search`);
- a trial whose latest checkpoint the stored Tune snapshot still names but Ray already deleted (the
  snapshot upload lagged) resumes from its next checkpoint (:class:`.faults.CheckpointRepair`); a
  trial that ASHA stopped after the stored snapshot is stopped again at the same epoch (:mod:`.asha`);
- a ``TrialFailure`` (non-finite loss) ends its trial without retries; other errors (lost node,
  CUDA out of memory) are retried ``study.max_failures`` times from the latest checkpoint
  (:mod:`.faults`);
- when every trial has ended, Optuna trials that no Tune trial owns are marked FAIL (orphaned).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from ckd_search.errors import UserError
from ckd_search.search.faults import error_line
from ckd_search.search.settings import DONE_FILE
from ckd_search.search.settings import DRIVER_LOCK
from ckd_search.search.settings import MLFLOW_ARTIFACTS
from ckd_search.search.settings import SETTINGS_FILE
from ckd_search.search.settings import TRIAL_DIR_PREFIX
from ckd_search.search.settings import SearchSettings
from ckd_search.search.settings import default_mlflow_uri
from ckd_search.search.settings import is_uri
from ckd_search.search.settings import trial_folder
from ckd_search.search.settings import unique_study_name
from ckd_search.search.space import Resources
from ckd_search.search.space import SearchSpace
from ckd_search.search.space import check_paths
from ckd_search.search.space import load_space
from ckd_search.storage import atomic_copy
from ckd_search.storage import atomic_write_text
from ckd_search.storage import check_output_dir
from ckd_search.storage import output_dir
from ckd_search.storage import sha256_file

log = logging.getLogger(__name__)
#: Driver-side Tune settings (pitfall 9: a per-epoch checkpoint with ``num_to_keep`` forces a snapshot
#: often, which is what keeps restore consistent; the warning about it is noise here).
DRIVER_ENV = {
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_DEDUP_LOGS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0: no experiment tables; ProgressCallback reports instead
}
#: Seconds between MLflow retries during an outage (default 15).
MLFLOW_RETRY_ENV = "CKD_SEARCH_MLFLOW_RETRY_S"
#: Seconds to wait at the end of a search for an unreachable MLflow before saving the queue (60).
MLFLOW_END_WAIT_ENV = "CKD_SEARCH_MLFLOW_END_WAIT_S"
#: Timeout of one MLflow HTTP call during a search (3): the calls run on Tune's driver thread.
MLFLOW_TIMEOUT_ENV = "CKD_SEARCH_MLFLOW_TIMEOUT_S"


@dataclass
class SearchOutcome:
    """What a search produced, read from the Optuna journal."""

    settings: SearchSettings
    finished: bool
    ended: int = 0  # Optuna trials complete, pruned or failed (orphans not counted)
    counts: dict[str, int] = field(default_factory=dict)
    best_value: float | list[float] | None = None
    best_trial: str | None = None
    best_config: dict[str, Any] | None = None
    pareto: list[dict[str, Any]] = field(default_factory=list)


def create_search(
    space_path: str | Path,
    *,
    out: str | Path | None = None,
    storage: str | None = None,
    mlflow_uri: str | None = None,
    num_trials: int | None = None,
    address: str | None = None,
    cpus: float | None = None,
    gpus: float | None = None,
    overrides: Mapping[str, Any] | None = None,
    warm_start_from: Sequence[str | Path] = (),
) -> SearchSettings:
    """Validate the space, create the run directory, copy the space and save ``search.yaml``."""
    from ckd_search.search.tracking import check_tracking_uri

    space = load_space(space_path, overrides)
    check_paths(space)
    if anchored := anchored_paths(space.fixed):  # a resume from another folder reads the same files
        overrides = {**(overrides or {}), **anchored}
        space = load_space(space_path, overrides)
    run_dir = Path(out or Path("runs") / space.study.name).expanduser().resolve()
    if (run_dir / SETTINGS_FILE).exists():
        raise UserError(
            f"{run_dir} already holds a search; continue it with --resume {run_dir} or pick another --out"
        )
    if num_trials is not None and num_trials < 1:
        raise UserError(f"--num-trials {num_trials} must be >= 1")
    trials = num_trials or space.study.num_trials
    if space.searcher.type == "grid":
        if num_trials is None or trials > space.grid_size():
            trials = space.grid_size()
    uri = mlflow_uri or default_mlflow_uri(run_dir)
    check_tracking_uri(uri)
    storage_path = storage or str(run_dir)
    if not is_uri(storage_path):  # on a cluster, run_search checks every node sees it
        storage_path = str(Path(storage_path).expanduser().resolve())
    warm_start = warm_start_points(space, warm_start_from)  # refused before anything is written
    if storage and not is_uri(storage_path):
        check_output_dir(run_dir)  # --out's own problem is named first
        output_dir(storage_path, "--storage")  # e.g. a path under a file: refused before Ray starts
    output_dir(run_dir)
    settings = SearchSettings(
        run_dir=str(run_dir),
        study_name=unique_study_name(space.study.name),
        experiment_name=space.study.name,
        num_trials=trials,
        storage_path=storage_path,
        mlflow_uri=uri,
        address=address,
        cpus=cpus,
        gpus=gpus,
        overrides=dict(overrides or {}),
        warm_start=warm_start,
        created=_now(),
    )
    atomic_copy(Path(space_path).expanduser(), settings.space_file)  # a torn copy would break --resume
    settings.space_sha256 = sha256_file(settings.space_file)  # --resume refuses an edited copy
    settings.save()
    return settings


#: Fixed path keys resolved against the folder a search starts in (``~`` paths are left as given).
PATH_KEYS = ("data.root", "teacher.weights", "data.cache_dir")


def anchored_paths(fixed: Mapping[str, Any]) -> dict[str, str]:
    """The relative paths among ``fixed``'s :data:`PATH_KEYS`, made absolute against this folder:
    saved with the search's overrides, so ``--resume`` from elsewhere (and a trial that prepares its
    own data in Ray's working folder) meets the files the search started with."""
    return {
        key: str(Path(value).resolve())
        for key in PATH_KEYS
        if isinstance(value := fixed.get(key), str)
        and not value.startswith("~")
        and not Path(value).is_absolute()
    }


def run_search(
    settings: SearchSettings, *, resume: bool = False, extra_callbacks: Sequence[Any] = ()
) -> SearchOutcome:
    """Run (or resume) the search described by ``settings``; Ray is shut down if started here."""
    for key, value in DRIVER_ENV.items():
        os.environ.setdefault(key, value)
    if resume:
        settings.check_space_unchanged()
    space = load_space(settings.space_file, settings.overrides)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from ckd_search.search.concurrency import write_cap
    from ckd_search.search.faults import install_failure_policy
    from ckd_search.search.import_ahead import ENGINE_MODULES
    from ckd_search.search.import_ahead import importing
    from ckd_search.search.resources import check_trial_device
    from ckd_search.search.resources import plan_trials
    from ckd_search.search.resources import start_or_join
    from ckd_search.search.shared_storage import check_storage_shared

    with driver_lock(settings.root):
        restorable = False
        if resume:
            check_journal(settings.journal_path, settings.study_name)
            restorable = _can_restore(settings)
        install_failure_policy()
        import ray

        ray_before = ray.is_initialized()
        cluster = None
        try:
            with importing(ENGINE_MODULES):  # torch loads from disk while Ray's processes start
                cluster = start_or_join(settings.address, settings.cpus, settings.gpus)
            check_storage_shared(settings.storage_path)  # before hours of data and teacher preparation
            plan = plan_trials(
                space.resources, space.study, settings.num_trials, cluster, settings.gpus, settings.cpus
            )
            check_trial_device(space.possible_values("run.device"), plan.trial.gpu)
            log.info("search %s: %d trials, %s", settings.study_name, settings.num_trials, plan.describe())
            if resume:
                settings.save()  # a new --address/--cpus/--gpus is kept once Ray and the plan took it
            from ckd_search.search.preparation import prepare_all

            registry = prepare_all(space, plan.trial, run_dir=settings.root)  # + descriptors.json
            trainable = _trainable(registry, plan.trial.cpu, plan.trial.gpu)
            write_cap(settings.concurrency_path, plan.max_concurrent)  # a restored limiter reads it
            if restorable:
                tuner = _restore(settings, trainable)
            else:
                if resume:
                    log.warning(
                        "%s: no whole Ray Tune experiment snapshot reached storage before the driver "
                        "stopped; starting the Tune experiment again in the same study",
                        settings.run_dir,
                    )
                tuner = _new_tuner(settings, space, plan, trainable, extra_callbacks, restart=resume)
            results = tuner.fit() if tuner is not None else None
            _fail_orphans_if_done(settings, space, results)
        finally:
            # a Ray this call started, or began to start when stopped (Ctrl-C during ray.init)
            if cluster.started_here if cluster is not None else not ray_before and ray.is_initialized():
                ray.shutdown()
    outcome = read_outcome(settings, space)
    if outcome.finished:
        atomic_write_text(settings.root / DONE_FILE, _json({"finished": _now(), "counts": outcome.counts}))
    return outcome


@contextlib.contextmanager
def driver_lock(root: Path) -> Iterator[None]:
    """Hold ``ROOT/driver.lock`` (``flock``) while a driver runs this search; refuse a second one."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    handle = open(root / DRIVER_LOCK, "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown process"
            raise UserError(
                f"{root}: another ckd-search driver runs this search ({holder}); "
                "wait for it to end or stop it first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {_now()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def check_journal(path: Path, study_name: str) -> None:
    """Repair a journal a killed driver left behind, or refuse a damaged one (one-line UserError).

    A record cut off mid-write (no final newline) is removed; a stale Optuna lock file is removed
    (the caller holds the driver lock, so no other writer exists); any other damage is refused.
    """
    lock = path.with_name(path.name + ".lock")
    if lock.is_symlink() or lock.exists():
        lock.unlink()
        log.warning("%s: removed the journal lock left by a stopped driver", lock)
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.warning(
            "%s: the last journal record was cut off mid-write (%d bytes); removed it",
            path,
            len(data) - keep,
        )
        with open(path, "r+b") as handle:
            handle.truncate(keep)
        data = data[:keep]
    for number, line in enumerate(data.splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or "op_code" not in record:
            raise UserError(
                f"{path}: record {number} is not an Optuna journal record (the file is corrupt); "
                "restore it from a backup or start a new search"
            )
    if not data:
        return
    import optuna

    from ckd_search.search.optuna_search import journal_storage

    try:
        names = optuna.get_all_study_names(journal_storage(path))
    except Exception as err:  # noqa: BLE001 - a journal Optuna cannot replay is a corrupt journal
        raise UserError(f"{path}: Optuna cannot read this journal ({type(err).__name__}: {err})") from None
    if study_name not in names:
        raise UserError(f"{path}: holds no study {study_name!r} (found {names}); wrong or damaged journal")


def _can_restore(settings: SearchSettings) -> bool:
    """Whether Tune can restore the experiment: its Tuner and one whole snapshot are on storage."""
    from ray import tune

    from ckd_search.search.snapshot import keep_tuner_whole
    from ckd_search.search.snapshot import settle_snapshot

    path = settings.experiment_path
    try:
        if not keep_tuner_whole(path):
            return False  # no whole tuner.pkl nor copy: the driver stopped before Tune wrote one
        return bool(tune.Tuner.can_restore(path)) and settle_snapshot(path) is not None
    except Exception as err:  # noqa: BLE001 - an unreachable storage is the user's to fix
        raise UserError(f"{settings.experiment_path}: cannot read the Ray Tune experiment ({err})") from None


def _fail_orphans_if_done(settings: SearchSettings, space: SearchSpace, results: Any) -> None:
    """When every Tune trial has ended and the study is complete, FAIL Optuna trials of no Tune trial.

    ``results`` is None when a restarted Tune experiment had no trial left to run.
    """
    from ckd_search.search.optuna_search import fail_orphans

    try:
        ended = (results.num_terminated + results.num_errors) if results is not None else 0
        total = len(results) if results is not None else 0
    except Exception:  # noqa: BLE001 - no result grid: leave the journal as it is
        return
    if ended < total or not settings.journal_path.is_file():
        return
    if not read_outcome(settings, space).finished:
        return  # stopped early: the next resume adopts the unfinished ones
    keep = frozenset(_trial_id_of(r) for r in results) if results is not None else frozenset()
    marked = fail_orphans(settings.journal_path, settings.study_name, keep)
    if marked:
        log.warning("%d Optuna trial(s) belonged to no Tune trial; marked FAIL (orphaned)", marked)


def _trial_id_of(result: Any) -> str:
    name = Path(str(getattr(result, "path", "") or "")).name
    return name.removeprefix(TRIAL_DIR_PREFIX)


def _trainable(registry: Any, cpus: float, gpus: float) -> Any:
    from ray import tune

    from trainables.ckd import train_ckd

    return tune.with_resources(tune.with_parameters(train_ckd, prepared=registry), {"cpu": cpus, "gpu": gpus})


def _new_tuner(
    settings: SearchSettings,
    space: SearchSpace,
    plan: Any,
    trainable: Any,
    extra: Sequence[Any],
    restart: bool = False,
) -> Any:
    """A new Tuner; None when a restart finds every trial of the study already run."""
    num_samples = settings.num_trials
    if restart:  # the new Tune experiment runs only what the study still lacks
        num_samples -= read_outcome(settings, space).ended
        if num_samples < 1:
            total = settings.num_trials
            log.info("search %s: the study holds all %d trials already", settings.study_name, total)
            return None
    from ray import tune

    from ckd_search.search.asha import PersistentASHA
    from ckd_search.search.concurrency import ResizableLimiter
    from ckd_search.search.faults import CheckpointRepair
    from ckd_search.search.ledger import LEDGER_FILE
    from ckd_search.search.ledger import EpochLedger
    from ckd_search.search.optuna_search import StudySearch
    from ckd_search.search.progress import ProgressCallback
    from ckd_search.search.snapshot import keep_tuner_whole
    from ckd_search.search.tracking import MlflowTrackingCallback

    study = space.study
    max_t = space.scheduler.max_t if space.scheduler else None
    searcher = StudySearch(
        space, settings.study_name, settings.journal_path, max_t, settings.warm_start, settings.num_trials
    )
    scheduler = None
    if space.scheduler is not None:
        scheduler = PersistentASHA(
            settings.asha_path,
            max_t=space.scheduler.max_t,
            grace_period=space.scheduler.grace_period,
            reduction_factor=space.scheduler.reduction_factor,
            journal=(str(settings.journal_path), settings.study_name),
        )
    sqlite_default = settings.mlflow_uri == default_mlflow_uri(settings.root)
    tracking = MlflowTrackingCallback(
        settings.mlflow_uri,
        settings.experiment_name,
        settings.study_name,
        settings.run_dir,
        study.metrics,
        study.modes,
        max_t=max_t,
        search_params=_search_params(settings, space, plan),
        space_file=settings.space_file,
        journal_path=settings.journal_path,
        base_config=space.trial_config({}, plan.trial),
        artifact_location=str(settings.root / MLFLOW_ARTIFACTS) if sqlite_default else None,
        retry_s=_seconds(MLFLOW_RETRY_ENV, 15.0, low=0.5),
        end_wait_s=_seconds(MLFLOW_END_WAIT_ENV, 60.0, low=0.0),
        call_timeout_s=_seconds(MLFLOW_TIMEOUT_ENV, 3.0, low=1.0),
        restart=restart,
    )
    progress = ProgressCallback(study.metric, study.mode, max_t, num_samples)
    tune_config = tune.TuneConfig(
        metric=None if study.multi_objective else study.metric,
        mode=None if study.multi_objective else study.mode,
        # pitfall 2: TPE must see finished trials; the cap follows the cluster on resume
        search_alg=ResizableLimiter(searcher, plan.max_concurrent, settings.concurrency_path),
        scheduler=scheduler,
        num_samples=num_samples,
        reuse_actors=True,  # no new worker process (and torch import) per trial
        trial_name_creator=trial_name,
        trial_dirname_creator=trial_dirname,
    )
    run_config = tune.RunConfig(
        name=settings.study_name,
        storage_path=settings.storage_path,
        callbacks=[
            CheckpointRepair(),
            tracking,
            progress,
            EpochLedger(settings.root / LEDGER_FILE),
            *extra,
        ],
        verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        failure_config=tune.FailureConfig(max_failures=study.max_failures),
    )
    param_space = space.trial_config({}, plan.trial)
    tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)
    keep_tuner_whole(settings.experiment_path)  # a copy before Tune uploads tuner.pkl again (snapshot.py)
    return tuner


def warm_start_points(space: SearchSpace, run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Best configs of earlier searches, restricted to this space's parameters, as Optuna points.

    A value outside this space (a bound, a choice, a fraction for an ``int``) is dropped, so Optuna
    samples that parameter. A grid is refused: it runs every point anyway, and Optuna's GridSampler
    would lose as many grid points as were queued ahead of it.
    """
    if run_dirs and space.searcher.type == "grid":
        raise UserError(
            f"--warm-start-from: {space.path} uses searcher: grid, which runs every grid point anyway; "
            "drop --warm-start-from or use another searcher"
        )
    points: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        earlier = read_outcome(SearchSettings.load(run_dir))
        configs = [earlier.best_config] if earlier.best_config else [p["config"] for p in earlier.pareto]
        if not configs:
            raise UserError(f"--warm-start-from {run_dir}: that search has no completed trial")
        for config in configs:
            point: dict[str, Any] = {}
            for p in space.params:
                value = config.get(p.key)
                if value is None:
                    continue
                if p.discrete:
                    if value in p.values:
                        point[p.key] = value
                elif isinstance(value, int | float) and (p.low or 0) <= value <= (p.high or 0):
                    if p.type != "int":
                        point[p.key] = value
                    elif float(value).is_integer():  # Optuna would truncate 3.7 and store it as is
                        point[p.key] = int(value)
            if point and point not in points:
                points.append(point)
                log.info("warm start from %s: %s", run_dir, point)
    return points


def _restore(settings: SearchSettings, trainable: Any) -> Any:
    from ray import tune

    path = settings.experiment_path  # the caller checked tune.Tuner.can_restore (_can_restore)
    log.info("resuming search %s from %s", settings.study_name, path)
    try:
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    except (OSError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise UserError(f"{path}: the Ray Tune experiment state cannot be read ({error_line(err)})") from None


def _seconds(name: str, default: float, low: float) -> float:
    raw = os.environ.get(name)
    try:
        return max(low, float(raw)) if raw else default
    except ValueError:
        raise UserError(f"{name}={raw!r} must be a number of seconds") from None


def trial_name(trial: Any) -> str:
    """``trial_<id>_<index>``: short and stable; the index (creation order, from 0) is what
    ``CKD_SEARCH_FAULT_INJECT`` selects trials by (Tune's experiment tag is ``<index + 1>_<params>``)."""
    tag = str(getattr(trial, "experiment_tag", "") or "")
    head = tag.split("_", 1)[0]
    index = f"_{int(head) - 1:03d}" if head.isdigit() and int(head) > 0 else ""
    return f"trial_{trial.trial_id}{index}"


def trial_dirname(trial: Any) -> str:
    """Trial folders: ``trial_<id>`` (settings.trial_folder)."""
    return trial_folder(trial.trial_id)


def _search_params(settings: SearchSettings, space: SearchSpace, plan: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "study": settings.study_name,
        "metric": ",".join(space.study.metrics),
        "mode": ",".join(space.study.modes),
        "num_trials": settings.num_trials,
        "searcher": space.searcher.type,
        "seed": space.study.seed,
        "scheduler": "asha" if space.scheduler else "fifo",
        "trial_cpu": plan.trial.cpu,
        "trial_gpu": plan.trial.gpu,
        "max_concurrent": plan.max_concurrent,
        "gpu_budget": plan.gpu_budget,
        "space": ",".join(space.keys),
    }
    if space.scheduler:
        params.update(
            {f"asha.{k}": getattr(space.scheduler, k) for k in ("max_t", "grace_period", "reduction_factor")}
        )
    params.update({f"fixed.{k}": v for k, v in space.fixed.items()})
    return params


def read_outcome(settings: SearchSettings, space: SearchSpace | None = None) -> SearchOutcome:
    """Counts and best trial of a search, from its Optuna journal (no Ray needed)."""
    import optuna
    from optuna.trial import TrialState

    from ckd_search.search.optuna_search import ORPHAN_ATTR
    from ckd_search.search.optuna_search import RAY_TRIAL_ATTR
    from ckd_search.search.optuna_search import journal_storage
    from ckd_search.search.outcome import best_first

    space = space or load_space(settings.space_file, settings.overrides)
    resources = Resources(space.resources.cpu, 0.0 if settings.gpus == 0 else space.resources.gpu)
    outcome = SearchOutcome(settings, finished=False)
    if not settings.journal_path.is_file():
        return outcome
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(
            study_name=settings.study_name, storage=journal_storage(settings.journal_path)
        )
    except KeyError:  # "Record does not exist": the driver stopped before the study was created
        return outcome
    trials = [t for t in study.get_trials(deepcopy=False) if not t.system_attrs.get(ORPHAN_ATTR)]
    counts = {
        s.name.lower(): 0
        for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    }
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    outcome.counts = counts
    outcome.ended = sum(1 for t in trials if t.state.is_finished())
    outcome.finished = outcome.ended >= settings.num_trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        return outcome
    if space.study.multi_objective:
        for t in study.best_trials:
            outcome.pareto.append(
                {
                    "trial": t.user_attrs.get(RAY_TRIAL_ATTR),
                    "values": list(t.values),
                    "config": space.trial_config(t.params, resources),
                }
            )
        return outcome
    # Not Optuna's best_trial, which breaks ties by trial number: every other view takes the lower
    # Ray trial id, so the summary does too and they all name the same best trial.
    mode = space.study.mode
    best = min(
        complete, key=lambda t: best_first(float(t.values[0]), t.user_attrs.get(RAY_TRIAL_ATTR, ""), mode)
    )
    outcome.best_value = best.value
    outcome.best_trial = best.user_attrs.get(RAY_TRIAL_ATTR)
    outcome.best_config = space.trial_config(best.params, resources)
    return outcome


def _now() -> str:
    import datetime as dt

    return dt.datetime.now().isoformat(timespec="seconds")


def _json(value: Any) -> str:
    return json.dumps(value, indent=1)
