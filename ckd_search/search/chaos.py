"""Fault-tolerance tooling: local multi-node Ray clusters, a node killer, and the epoch audit.

Used by ``tests/reliability`` and ``make soak`` (``bench/soak.py``); nothing in a search imports it.

- :class:`LocalCluster` starts a head and worker nodes on this machine as ``ray start --block``
  processes, each in its own session, so a node can be killed like a lost machine: SIGKILL to every
  process of its session (the ``ray start`` process, its raylet and the raylet's workers, which
  sit in process groups of their own). It never runs ``ray stop`` (that stops every Ray on the
  machine). Nodes run with token authentication (``RAY_AUTH_MODE=token``) like any Ray 2.60 cluster.
- :class:`NodeKiller` kills a random worker with probability ``p`` every ``interval`` seconds (Ray
  Tune's release test uses 0.03 every 10 s) and starts a replacement, like an autoscaler.
- :func:`audit_run` reads the search's epoch ledger (:mod:`.ledger`: every result as the driver
  received it, across retries and restores) and checks that no epoch is lost: after de-duplication
  the epochs are ``1..E``, and (when the driver lived) each retry starts right after the last
  checkpoint.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
#: Fast detection of a dead node (defaults: 3 s period x 5 failures, 10 s timeout).
HEAD_ENV = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def session_pids(sid: int) -> list[int]:
    """Pids of every live process in session ``sid`` (Linux ``/proc``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def kill_session(sid: int, sig: int = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to every process of session ``sid``; returns their pids."""
    pids = session_pids(sid)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids


@dataclass
class Node:
    """One ``ray start --block`` process (a session leader) and its log."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    killed: bool = False

    @property
    def sid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return not self.killed and self.proc.poll() is None


class LocalCluster:
    """A head node and worker nodes on this machine; use as a context manager.

    Args:
        workdir: folder for node logs.
        head_cpus: CPUs of the head (0: trials run on workers only; the driver runs on the head).
        worker_cpus, worker_gpus: resources of each worker (GPUs are logical: they only count).
        object_store_mb: object store of each node (small: the tiny data sets need little).
    """

    def __init__(
        self,
        workdir: str | Path,
        *,
        head_cpus: float = 0,
        worker_cpus: float = 1,
        worker_gpus: float = 0,
        object_store_mb: int = 150,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.head_cpus = head_cpus
        self.worker_cpus = worker_cpus
        self.worker_gpus = worker_gpus
        self.object_store = str(object_store_mb * 1024 * 1024)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Ray's socket paths are limited to ~107 bytes: a short temp dir under /tmp.
        self.temp = tempfile.mkdtemp(prefix="ckdray", dir="/tmp")
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_DEDUP_LOGS": "1",
        }
        self.head: Node | None = None
        self.workers: list[Node] = []
        self.killed: list[Node] = []
        self._count = 0

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> LocalCluster:
        try:
            self.start_head()
        except BaseException:
            self.shutdown()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def _ray(self) -> str:
        exe = Path(sys.executable).with_name("ray")
        return str(exe) if exe.is_file() else (shutil.which("ray") or "ray")

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> Node:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "w") as handle:
            proc = subprocess.Popen(
                [self._ray(), "start", *args, "--block", "--disable-usage-stats"],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        return Node(name, proc, log_path)

    def _wait_started(self, node: Node, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = node.log_path.read_text(errors="replace")
            if "Ray runtime started" in text:
                return
            if node.proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited ({node.proc.returncode}):\n{text[-3000:]}")
            time.sleep(0.3)
        raise TimeoutError(
            f"{node.name} did not start in {timeout:g} s:\n{node.log_path.read_text()[-3000:]}"
        )

    def start_head(self, timeout: float = 90) -> Node:
        self.head = self._spawn("head", self.head_args(), {**self.env, **HEAD_ENV})
        self._wait_started(self.head, timeout)
        return self.head

    def head_args(self) -> list[str]:
        """``ray start`` arguments of the head: loopback only, no dashboard."""
        return [
            "--head",
            "--port",
            str(self.port),
            "--node-ip-address",
            "127.0.0.1",
            "--temp-dir",
            self.temp,
            "--include-dashboard",
            "false",
            "--dashboard-host",
            "127.0.0.1",
            "--num-cpus",
            f"{self.head_cpus:g}",
            "--num-gpus",
            "0",
            "--object-store-memory",
            self.object_store,
        ]

    def add_worker(self, timeout: float = 90) -> Node:
        """Start one worker node and wait until it has joined."""
        self._count += 1
        node = self._spawn(f"worker{self._count}", self.worker_args(), self.env)
        self.workers.append(node)
        self._wait_started(node, timeout)
        return node

    def worker_args(self) -> list[str]:
        return [
            "--address",
            self.address,
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            f"{self.worker_cpus:g}",
            "--num-gpus",
            f"{self.worker_gpus:g}",
            "--object-store-memory",
            self.object_store,
        ]

    def kill(self, node: Node) -> list[int]:
        """SIGKILL every process of ``node`` (a lost machine); returns the pids killed."""
        pids = kill_session(node.sid)
        node.killed = True
        try:
            node.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if node in self.workers:
            self.workers.remove(node)
            self.killed.append(node)
        return pids

    def alive_workers(self) -> list[Node]:
        return [w for w in self.workers if w.alive()]

    def shutdown(self) -> None:
        """Stop every node this object started (SIGTERM, then SIGKILL of their sessions)."""
        nodes = [*self.workers, *([self.head] if self.head else [])]
        for node in nodes:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in nodes:
            try:
                node.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        for node in [*nodes, *self.killed]:
            kill_session(node.sid)
            if node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait(timeout=10)
        self.workers, self.head = [], None
        shutil.rmtree(self.temp, ignore_errors=True)


class NodeKiller(threading.Thread):
    """Every ``interval`` s, with probability ``p``, SIGKILL a random worker; start a replacement.

    Ray Tune's fault-tolerance release test fires with p = 0.03 every 10 s on 16 nodes. At least
    ``keep`` workers stay alive; ``max_kills`` caps the total (None: no cap).
    """

    def __init__(
        self,
        cluster: LocalCluster,
        *,
        p: float,
        interval: float,
        seed: int = 0,
        replace: bool = True,
        keep: int = 0,
        max_kills: int | None = None,
    ) -> None:
        super().__init__(name="node-killer", daemon=True)
        self.cluster = cluster
        self.p, self.interval = p, interval
        self.rng = random.Random(seed)
        self.replace, self.keep, self.max_kills = replace, keep, max_kills
        self.kills: list[tuple[float, str]] = []
        self.errors: list[str] = []
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        start = time.monotonic()
        while not self._stop_event.wait(self.interval):
            if self.max_kills is not None and len(self.kills) >= self.max_kills:
                continue
            alive = self.cluster.alive_workers()
            if len(alive) <= self.keep or self.rng.random() >= self.p:
                continue
            victim = self.rng.choice(alive)
            self.cluster.kill(victim)
            self.kills.append((time.monotonic() - start, victim.name))
            log.warning("node killer: killed %s at %.0f s", victim.name, time.monotonic() - start)
            if self.replace and not self._stop_event.is_set():
                try:
                    self.cluster.add_worker()
                except Exception as err:  # noqa: BLE001 - reported by the caller
                    self.errors.append(f"replacement worker failed: {err}")


# --- the epoch audit ----------------------------------------------------------------------------
@dataclass
class TrialAudit:
    """What one trial reported, epoch by epoch, across retries and restores.

    ``rows`` are result rows (``epoch``, ``since_restore``, ``checkpoint``, ``pid``) in the order the
    driver received them; ``events`` are all ledger events of the trial.
    """

    trial_id: str
    rows: list[dict[str, Any]]
    budget: int | None
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def epochs(self) -> list[int]:
        """Reported epochs in order, duplicates included (a replayed epoch appears twice)."""
        return [int(r["epoch"]) for r in self.rows]

    @property
    def segments(self) -> list[list[dict[str, Any]]]:
        """Rows split where the trial (re)started (``since_restore == 1``)."""
        out: list[list[dict[str, Any]]] = []
        for row in self.rows:
            if not out or int(row.get("since_restore", 0)) == 1:
                out.append([])
            out[-1].append(row)
        return out

    @property
    def restarts(self) -> int:
        return max(0, len(self.segments) - 1)

    @property
    def last_epoch(self) -> int:
        return max(self.epochs, default=0)

    @property
    def lost(self) -> list[int]:
        """Epochs in 1..last that were never reported."""
        return sorted(set(range(1, self.last_epoch + 1)) - set(self.epochs))

    @property
    def reached_end(self) -> bool:
        return self.budget is not None and self.last_epoch >= self.budget

    def resume_points(self) -> list[tuple[int, int]]:
        """(epoch of the last checkpoint before a restart, first epoch after it) per restart.

        The last checkpoint is the last one Tune registered (``checkpoint`` events): a result's
        checkpoint becomes the one a restart resumes from only then. A ledger without those events
        (written before they existed) falls back to the results that carried a checkpoint.
        """
        registered = any(e.get("event") == "checkpoint" for e in self.events)
        points: list[tuple[int, int]] = []
        checkpointed, started = 0, False
        for event in self.events:
            kind = event.get("event")
            if kind == "checkpoint" and registered:
                checkpointed = int(event.get("epoch", 0))
            elif kind == "result" and "epoch" in event:
                if started and int(event.get("since_restore", 0)) == 1:
                    points.append((checkpointed, int(event["epoch"])))
                started = True
                if not registered and event.get("checkpoint"):
                    checkpointed = int(event["epoch"])
        return points

    def bad_resumes(self) -> list[tuple[int, int]]:
        """Restarts that did not continue at last checkpoint + 1."""
        return [(c, first) for c, first in self.resume_points() if first != c + 1]


def audit_run(run_dir: str | Path) -> dict[str, TrialAudit]:
    """Trial id -> :class:`TrialAudit` from a search's epoch ledger (``RUN_DIR/epochs.jsonl``)."""
    from ckd_search.search.ledger import LEDGER_FILE
    from ckd_search.search.ledger import read_ledger

    audits: dict[str, TrialAudit] = {}
    for row in read_ledger(Path(run_dir) / LEDGER_FILE):
        audit = audits.setdefault(row["trial"], TrialAudit(row["trial"], [], None))
        audit.events.append(row)
        if row.get("event") == "result" and "epoch" in row:
            audit.rows.append(row)
            if row.get("budget") is not None:
                audit.budget = max(audit.budget or 0, int(row["budget"]))
    return audits


def summarize(audits: dict[str, TrialAudit]) -> dict[str, Any]:
    """Totals over a search: trials, completed, restarts, epochs lost, bad resumes."""
    return {
        "trials": len(audits),
        "completed": sum(1 for a in audits.values() if a.reached_end),
        "restarts": sum(a.restarts for a in audits.values()),
        "epochs_reported": sum(len(a.epochs) for a in audits.values()),
        "epochs_replayed": sum(len(a.epochs) - len(set(a.epochs)) for a in audits.values()),
        "epochs_lost": sum(len(a.lost) for a in audits.values()),
        "bad_resumes": sum(len(a.bad_resumes()) for a in audits.values()),
    }
