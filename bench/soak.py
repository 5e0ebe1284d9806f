"""Soak test: a search on a local multi-node Ray cluster while a node killer SIGKILLs workers.

`make soak` runs it with the defaults (about four minutes on two cores). Like Ray Tune's
fault-tolerance release test, a node killer fires with probability ``--kill-prob`` every
``--interval`` seconds and kills a random worker node (every process of it); a replacement joins, as
an autoscaler would. The search (``max_failures: -1``, no scheduler: every trial must reach its last
epoch) runs the real training loop on tiny settings; each epoch is stretched by ``--epoch-delay``
seconds of sleep (the fault-injection hook's ``delay``) so trials are long without loading the CPU.

Printed at the end: trials completed, faults injected (nodes killed, trial retries), epochs replayed
and data lost (epochs missing from the per-trial sequences in the epoch ledger, plus trials that did
not reach their end; must be 0). Exit status 0 only when nothing was lost.

    python bench/soak.py --duration 240 --kill-prob 0.3 --interval 10 --trials 32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

# Run from a checkout: this tree's ckd_search first.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ckd_search.argtypes import OneLineParser  # noqa: E402
from ckd_search.search.chaos import LocalCluster  # noqa: E402
from ckd_search.search.chaos import NodeKiller  # noqa: E402
from ckd_search.search.chaos import audit_run  # noqa: E402
from ckd_search.search.chaos import kill_session  # noqa: E402
from ckd_search.search.chaos import summarize  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=240, help="seconds the node killer is active")
    p.add_argument("--kill-prob", type=float, default=0.3, help="kill probability per interval")
    p.add_argument("--interval", type=float, default=10, help="seconds between node-killer draws")
    p.add_argument("--trials", type=int, default=32, help="trials in the search")
    p.add_argument("--epochs", type=int, default=8, help="epochs per trial")
    p.add_argument("--workers", type=int, default=2, help="worker nodes (1 CPU each)")
    p.add_argument("--epoch-delay", type=float, default=1.0, help="seconds of sleep added per epoch")
    p.add_argument("--seed", type=int, default=0, help="seed of the node killer and the searcher")
    p.add_argument("--max-kills", type=int, default=None, help="cap on nodes killed")
    p.add_argument("--out", default=None, help="work folder (default: a new folder under /tmp)")
    p.add_argument("--timeout", type=float, default=1800, help="give up on the search after this long")
    return p.parse_args(argv)


def write_space(folder: Path, args: argparse.Namespace) -> Path:
    raw = {
        "study": {
            "name": "soak",
            "metric": "train_loss",
            "mode": "min",
            "num_trials": args.trials,
            "seed": args.seed,
            "max_failures": -1,
        },
        "fixed": {
            "data.limit": 200,
            "data.size": 16,
            "data.timesteps": 2,
            "model.width": 0.0625,
            "teacher.epochs": 1,
            "run.epochs": args.epochs,
            "optim.batch_size": 32,
            "data.cache_dir": str(folder / "cache"),
        },
        "space": {
            "loss.beta": {"type": "uniform", "low": 0.0, "high": 4.0},
            "kd.temperature": {"type": "choice", "values": [2.0, 4.0]},
        },
        "searcher": "random",
        "resources": {"cpu": 1, "gpu": 0},
    }
    path = folder / "soak_space.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def mlflow_gaps(run: Path, epochs: dict[str, int]) -> int:
    """Epochs missing from (or logged twice in) each trial's MLflow train_loss history."""
    from mlflow import MlflowClient

    from ckd_search.search.settings import SearchSettings

    settings = SearchSettings.load(run)
    client = MlflowClient(settings.mlflow_uri)
    exp = client.get_experiment_by_name(settings.experiment_name)
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    gaps = 0
    for r in runs:
        trial = r.data.tags.get("ckd.trial_id")
        if trial not in epochs:
            continue
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
        gaps += len(set(range(1, epochs[trial] + 1)) ^ set(steps)) + (len(steps) - len(set(steps)))
    return gaps


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = Path(args.out or tempfile.mkdtemp(prefix="ckd-soak-")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    run = folder / "run"
    space = write_space(folder, args)
    print(
        f"soak: {args.trials} trials x {args.epochs} epochs on {args.workers} workers; node killer "
        f"p={args.kill_prob:g} every {args.interval:g} s for {args.duration:g} s; work folder {folder}",
        flush=True,
    )
    start = time.monotonic()
    with LocalCluster(folder / "nodes", head_cpus=0, worker_cpus=1) as cluster:
        for _ in range(args.workers):
            cluster.add_worker()
        env = {
            **cluster.env,
            "CKD_SEARCH_FAULT_INJECT": f"delay:*:*:{args.epoch_delay:g}",
            "CKD_SEARCH_FAULT_DIR": str(folder / "faults"),
        }
        cmd = [sys.executable, "-m", "ckd_search.cli", "search", "--space", str(space), "--out", str(run)]
        cmd += ["--address", cluster.address, "--gpus", "0"]
        with open(folder / "driver.log", "w") as log:
            driver = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        killer = NodeKiller(
            cluster, p=args.kill_prob, interval=args.interval, seed=args.seed, max_kills=args.max_kills
        )
        killer.start()
        try:
            deadline = time.monotonic() + args.timeout
            while driver.poll() is None and time.monotonic() < deadline:
                if time.monotonic() - start > args.duration:
                    killer.stop()
                time.sleep(1)
            killer.stop()
            killer.join(timeout=120)
            if driver.poll() is None:
                print(f"soak: the search did not finish in {args.timeout:g} s; stopping it", flush=True)
                kill_session(driver.pid)
                driver.wait(timeout=60)
        finally:
            killer.stop()
            if driver.poll() is None:
                kill_session(driver.pid)
    elapsed = time.monotonic() - start

    audits = audit_run(run)
    totals = summarize(audits)
    incomplete = [a.trial_id for a in audits.values() if not a.reached_end]
    missing_trials = max(0, args.trials - len(audits))
    lost = (
        totals["epochs_lost"]
        + sum((a.budget or args.epochs) - a.last_epoch for a in audits.values() if not a.reached_end)
        + missing_trials * args.epochs
    )
    retries = sum(1 for a in audits.values() for e in a.events if e["event"] == "recover")
    gaps = mlflow_gaps(run, {a.trial_id: a.last_epoch for a in audits.values()}) if audits else 0
    figures = {
        "duration_s": round(elapsed),
        "driver_exit": driver.returncode,
        "trials_planned": args.trials,
        "trials_completed": totals["completed"],
        "nodes_killed": len(killer.kills),
        "kill_times_s": [round(t) for t, _ in killer.kills],
        "trial_retries": retries,
        "epochs_reported": totals["epochs_reported"],
        "epochs_replayed": totals["epochs_replayed"],
        "bad_resumes": totals["bad_resumes"],
        "data_lost_epochs": lost,
        "mlflow_step_gaps": gaps,
        "killer_errors": killer.errors,
    }
    (folder / "soak.json").write_text(json.dumps(figures, indent=1))
    print("soak results")
    print(f"  duration                {figures['duration_s']} s (driver exit {driver.returncode})")
    print(f"  trials completed        {totals['completed']}/{args.trials}")
    print(
        f"  faults injected         {len(killer.kills)} nodes killed at {figures['kill_times_s']} s; "
        f"{retries} trial retries"
    )
    print(
        f"  epochs reported         {totals['epochs_reported']} ({totals['epochs_replayed']} replayed "
        "after a restart)"
    )
    print(f"  resumes not at ckpt+1   {totals['bad_resumes']}")
    print(f"  data lost               {lost} epochs (MLflow step gaps: {gaps})")
    if incomplete:
        print(f"  incomplete trials       {incomplete}")
    if killer.errors:
        print(f"  node-killer errors      {killer.errors}")
    print(f"  details                 {folder / 'soak.json'}, {folder / 'driver.log'}")
    ok = driver.returncode == 0 and lost == 0 and gaps == 0 and totals["completed"] == args.trials
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.exit(main())
