"""``ckd-search search | check-space | export | ui``: the search commands (printing is done here)."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from ckd_search.errors import UserError
from ckd_search.search.settings import CONCURRENCY_FILE
from ckd_search.search.settings import DESCRIPTORS_FILE
from ckd_search.search.settings import DRIVER_LOCK
from ckd_search.search.settings import SETTINGS_FILE
from ckd_search.search.settings import SPACE_FILE


def run_check_space(args: argparse.Namespace) -> int:
    """Validate a space file and build ``--draws`` random configs; no Ray, a few seconds."""
    from ckd_search.search.advice import scheduler_notes
    from ckd_search.search.space import check_draws
    from ckd_search.search.space import check_paths
    from ckd_search.search.space import load_space

    if args.draws < 0:
        raise UserError(f"--draws {args.draws} must be >= 0")
    space = load_space(args.space)
    check_paths(space)
    configs = check_draws(space, args.draws, seed=space.study.seed)
    print(describe_space(space))
    variants = _prepare_variants(space)
    if variants:
        labels = "; ".join(label for _, label in variants.values())
        print(f"  data/teacher preparations: {len(variants)} ({labels})")
    for note in scheduler_notes(space, configs):
        print(f"  note: {note}")
    print(f"ok: {space.path}: {len(configs)} random configs built and validated")
    return 0


def print_notes(space: Any) -> None:
    """check-space's notes on the space, printed as a new search starts."""
    from ckd_search.search.advice import search_notes

    for note in search_notes(space):
        print(f"  note: {note}")


def describe_space(space: Any) -> str:
    study = space.study
    metric = ", ".join(f"{m} ({d})" for m, d in zip(study.metrics, study.modes))
    sched = "none"
    if space.scheduler:
        s = space.scheduler
        sched = f"ASHA on epoch (max_t {s.max_t}, grace {s.grace_period}, rf {s.reduction_factor:g})"
    lines = [
        f"study {study.name}: {study.num_trials} trials, metric {metric}, searcher {space.searcher.type} "
        f"(seed {study.seed}), scheduler {sched}",
        f"  resources per trial: {space.resources.cpu:g} CPU, {space.resources.gpu:g} GPU"
        + (f"; at most {study.max_concurrent} at once" if study.max_concurrent else ""),
        f"  fixed: {len(space.fixed)} keys" + (f" ({', '.join(sorted(space.fixed))})" if space.fixed else ""),
    ]
    lines += [f"  {p.key}: {p.describe()}" for p in space.params]
    return "\n".join(lines)


def _prepare_variants(space: Any) -> dict[str, Any]:
    try:
        from ckd_search.search.preparation import prepare_variants

        return prepare_variants(space)
    except ImportError:  # engine not installed: the space itself is still checked
        return {}


def run_search_command(args: argparse.Namespace) -> int:
    """Start a search from ``--space`` or continue one with ``--resume RUN_DIR``."""
    from ckd_search.cli import parse_overrides
    from ckd_search.search.resources import check_local_gpus
    from ckd_search.search.settings import SearchSettings
    from ckd_search.search.space import load_space
    from ckd_search.search.tuner import create_search
    from ckd_search.search.tuner import run_search

    if args.resume:
        if args.space:
            raise UserError("--resume RUN_DIR continues a search as it was; drop --space")
        if args.warm_start_from:
            raise UserError("--warm-start-from applies to new searches only")
        # The study, run directory and stores are fixed when a search starts (search.yaml);
        # only where it runs (--address, --cpus, --gpus) may change.
        if given := _fixed_on_resume(args):
            raise UserError(f"--resume RUN_DIR continues a search as it was; drop {', '.join(given)}")
        settings = SearchSettings.load(args.resume, for_resume=True)
        _check_gpu_share_kept(settings, args.gpus)
        for name in ("address", "cpus", "gpus"):
            if getattr(args, name) is not None:
                setattr(settings, name, getattr(args, name))  # the cluster may be a new one
        print(f"resuming {settings.study_name} in {settings.run_dir}")
        outcome = run_search(settings, resume=True)
    else:
        if not args.space:
            raise UserError("give --space FILE (a search-space YAML) or --resume RUN_DIR")
        check_local_gpus(args.address, args.gpus)  # refused before the run folder is made
        settings = create_search(
            args.space,
            out=args.out,
            storage=args.storage,
            mlflow_uri=args.mlflow_uri,
            num_trials=args.num_trials,
            address=args.address,
            cpus=args.cpus,
            gpus=args.gpus,
            overrides=parse_overrides(args.set),
            warm_start_from=args.warm_start_from or (),
        )
        print(f"search {settings.study_name}: run directory {settings.run_dir}")
        try:
            print_notes(load_space(settings.space_file, settings.overrides))
            outcome = run_search(settings)
        except (UserError, KeyboardInterrupt):
            remove_unstarted(settings)  # refused or stopped before its first trial: nothing to resume
            raise
    print_outcome(outcome)
    return 0 if outcome.finished else 130


#: ``search`` flags that set up a new search; a resumed one keeps what it was started with.
_NEW_SEARCH_FLAGS = (
    ("num_trials", "--num-trials"),
    ("set", "--set"),
    ("out", "--out"),
    ("storage", "--storage"),
    ("mlflow_uri", "--mlflow-uri"),
)


def _fixed_on_resume(args: argparse.Namespace) -> list[str]:
    """Each new-search flag given, with its value as typed (a bare ``--set`` is ``[]``, not None)."""
    given = []
    for name, flag in _NEW_SEARCH_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            shown = " ".join(value) if isinstance(value, list) else str(value)
            given.append(f"{flag} {shown}".rstrip())
    return given


#: What ``create_search``, the driver lock and the data preparation write before a search starts.
_SETUP_FILES = frozenset({SETTINGS_FILE, SPACE_FILE, DRIVER_LOCK, CONCURRENCY_FILE, DESCRIPTORS_FILE})


def remove_unstarted(settings: Any) -> None:
    """Remove what a new search wrote when it was refused or stopped before its first trial."""
    root = Path(settings.run_dir)
    if not root.is_dir() or not set(os.listdir(root)) <= _SETUP_FILES:
        return  # the search started (journal, Tune experiment, MLflow store): keep it for --resume
    for name in _SETUP_FILES:
        (root / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        root.rmdir()


def print_outcome(outcome: Any) -> None:
    settings = outcome.settings
    counts = ", ".join(f"{n} {k}" for k, n in outcome.counts.items() if n)
    state = "finished" if outcome.finished else "interrupted"
    print(f"search {settings.study_name} {state}: {counts or 'no trials'}")
    if outcome.best_config is not None:
        print(f"best value {outcome.best_value:.4f} (trial {outcome.best_trial}); config:")
        for key, value in sorted(outcome.best_config.items()):
            print(f"  {key}: {value}")
    for point in outcome.pareto:
        print(f"pareto: trial {point['trial']} values {point['values']}")
    if not outcome.finished:
        print(f"continue with: ckd-search search --resume {settings.run_dir}")
    print(f"export: ckd-search export {settings.run_dir}")
    if settings.mlflow_uri.startswith("sqlite:"):
        print(f"MLflow UI: ckd-search ui {settings.run_dir}")
    else:
        print(f"MLflow: {settings.mlflow_uri} (experiment {settings.experiment_name})")
    print(f"Optuna dashboard: optuna-dashboard {settings.journal_path}")


def run_export(args: argparse.Namespace) -> int:
    from ckd_search.search.export import export_run

    result = export_run(args.run_dir, top=args.top, out=args.out)
    print(f"{result.trials} trials -> {result.out / 'trials.parquet'}")
    for item in result.best:
        print(
            f"  best {item['rank']}: {result.out / item['file']} (trial {item['trial_id']}, {item['status']})"
        )
    if result.pareto:
        from ckd_search.search.export import PARETO_FILE

        print(f"Pareto front: {len(result.pareto)} trial(s) -> {result.out / PARETO_FILE}")
        for point in result.pareto:
            values = ", ".join(f"{m}={v:.4g}" for m, v in point["values"].items())
            print(f"  trial {point['trial_id']}: {values}")
    return 0


def run_ui(args: argparse.Namespace) -> int:
    """Start ``mlflow ui`` on the run directory's SQLite store (127.0.0.1 unless --host)."""
    from ckd_search.search.settings import MLFLOW_DB

    run_dir = Path(args.run_dir).expanduser().resolve()
    db = run_dir / MLFLOW_DB
    if not run_dir.is_dir():
        raise UserError(f"{args.run_dir}: no such run directory")
    if not db.is_file():
        raise UserError(f"{run_dir}: no {MLFLOW_DB} here (was the search tracked on an MLflow server?)")
    _check_port_free(args.host, args.port)  # mlflow itself exits 0 when the port is taken
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe)] if exe.is_file() else [shutil.which("mlflow") or "mlflow"]
    cmd += ["ui", "--backend-store-uri", f"sqlite:///{db}", "--host", args.host, "--port", str(args.port)]
    print(f"MLflow UI on http://{args.host}:{args.port} (Ctrl+C stops it)")
    try:
        return serve(cmd)
    except FileNotFoundError:
        raise UserError("mlflow is not installed in this environment") from None


def serve(cmd: list[str], grace_s: float = 10.0) -> int:
    """Run a server command until it ends or this process is told to stop (Ctrl+C, SIGTERM,
    SIGHUP); then stop the server's whole process group (``mlflow ui`` starts uvicorn workers and
    job consumers), so nothing is left holding the port. Returns its exit code, or 128 + signal."""
    import signal

    proc = subprocess.Popen(cmd, env={**os.environ}, start_new_session=True)  # its own group
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def stop(signum: int, _frame: Any) -> None:
        raise _Stopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in stops}
    try:
        return proc.wait()
    except _Stopped as stopped:
        _stop_group(proc, grace_s)
        return 128 + stopped.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM to the process group of ``proc``; SIGKILL to whatever of it is left after ``grace_s``."""
    import signal
    import time

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _group_alive(proc):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _group_alive(proc: subprocess.Popen[bytes]) -> bool:
    proc.poll()  # reap the leader, or it stays in the group as a zombie
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


def _check_port_free(host: str, port: int) -> None:
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as err:
        raise UserError(
            f"--port {port}: cannot listen on {host} ({err.strerror or err}); pick another --port"
        ) from None


def _check_gpu_share_kept(settings: Any, gpus: float | None) -> None:
    """Tune restores unfinished trials with the resources they started with: a resume that turns
    GPU trials into CPU ones (--gpus 0) or back would leave them PENDING or on the wrong device."""
    if gpus is None or (gpus == 0) == (settings.gpus == 0):
        return
    from ckd_search.search.space import load_space

    if load_space(settings.space_file, settings.overrides).resources.gpu == 0:
        return  # CPU trials either way
    was = "CPU trials (--gpus 0)" if settings.gpus == 0 else "GPU trials"
    raise UserError(
        f"--gpus {gpus:g}: this search started {was}, and Ray restores unfinished trials with the "
        "resources they started with; resume with the same kind (or start a new search)"
    )
