"""Ray cluster start/join and per-trial resources: how many trials fit, failing fast when none can.

``--gpus N`` is the search's GPU budget: with a per-trial share ``f`` at most ``N / f`` trials run at
once (Ray's fractions are bookkeeping, pitfall 10; :mod:`trainables.ckd` caps each trial's memory),
and at most ``floor(1 / f)`` on each card, since Ray never splits one trial's share across cards.
Without ``study.max_concurrent`` the cap is what the resources allow; a warning says when that is
over half the study (a model-based searcher then samples mostly blind, ray#14770).
``--gpus 0`` or ``resources.gpu: 0`` runs CPU trials. A request no node can satisfy would stay
PENDING forever in Ray (pitfall 9), so it is a UserError before any trial starts.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass

from ckd_search.errors import UserError
from ckd_search.search.space import Resources
from ckd_search.search.space import Study

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cluster:
    """What the connected Ray cluster offers."""

    started_here: bool
    nodes: tuple[tuple[float, float], ...]  # (CPUs, GPUs) of each alive node

    @property
    def cpus(self) -> float:
        return sum(c for c, _ in self.nodes)

    @property
    def gpus(self) -> float:
        return sum(g for _, g in self.nodes)


@dataclass(frozen=True)
class Plan:
    """Per-trial resources and the concurrency cap of a search."""

    trial: Resources
    max_concurrent: int
    gpu_budget: float

    def describe(self) -> str:
        kind = f"{self.trial.gpu:g} GPU" if self.trial.gpu else "no GPU"
        return f"{self.trial.cpu:g} CPU + {kind} per trial, up to {self.max_concurrent} at once" + (
            f" (GPU budget {self.gpu_budget:g})" if self.trial.gpu else ""
        )


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Refuse a ``host:port`` nothing answers at, in seconds: ``ray.init`` keeps retrying such an
    address for minutes. ``auto`` and other forms are left to Ray."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise UserError(f"--address {address}: nothing answers there ({err.strerror or err})") from None


def check_local_gpus(address: str | None, gpus: float | None) -> int | None:
    """The GPU count a new local Ray gets for ``--gpus``; a UserError where this machine has fewer.

    Only where :func:`start_or_join` would start that Ray (no ``address``, none initialised here);
    the search command calls it before writing anything, ``start_or_join`` before ``ray.init``.
    """
    ray = sys.modules.get("ray")
    if address is not None or (ray is not None and ray.is_initialized()):
        return None
    num_gpus = None if gpus is None else int(math.ceil(gpus))
    if num_gpus and num_gpus > (physical := local_gpus()):
        raise UserError(
            f"--gpus {gpus:g}: this machine has {physical} GPU(s), and trials Ray placed on the others "
            "would find none; for logical GPUs start Ray yourself (ray start --head --num-gpus N) "
            "and pass --address"
        )
    return num_gpus


def start_or_join(address: str | None, cpus: float | None, gpus: float | None) -> Cluster:
    """Join ``address``, reuse an initialised Ray, or start a local one on 127.0.0.1.

    A local Ray gets ``num_cpus=--cpus`` (default: Ray's own count, which honours a container's CPU
    limit where ``os.cpu_count()`` sees the host's) and ``num_gpus=--gpus``, at most the GPUs this
    machine has (Ray would make up the rest), no dashboard, and loopback addresses only (the node and
    the dashboard agent bind 127.0.0.1). Logical GPUs for tests come from a Ray started beforehand.
    """
    if address is None and "ray" not in sys.modules:
        # Read by Ray at import time: a single-machine Ray then uses 127.0.0.1, not the LAN address.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    started = False
    if ray.is_initialized():
        log.info("using the Ray instance already initialised in this process")
    elif address is not None:
        # Trials on other nodes do not inherit this process's environment: forward the test-only
        # fault-injection settings (ckd_search.search.faults) when they are set, nothing otherwise.
        from ckd_search.search.faults import FAULT_DIR_ENV
        from ckd_search.search.faults import FAULT_ENV

        check_reachable(address)
        forwarded = {k: os.environ[k] for k in (FAULT_ENV, FAULT_DIR_ENV) if os.environ.get(k)}
        runtime_env = {"env_vars": forwarded} if forwarded else None
        try:
            ray.init(
                address=address, logging_level=logging.WARNING, log_to_driver=True, runtime_env=runtime_env
            )
        except (ConnectionError, ValueError, RuntimeError, ray.exceptions.AuthenticationError) as err:
            hint = (
                ""
                if os.environ.get("RAY_AUTH_MODE")
                else "; with token authentication set RAY_AUTH_MODE=token"
            )
            raise UserError(f"--address {address}: cannot join the Ray cluster ({err}){hint}") from None
    else:
        num_gpus = check_local_gpus(address, gpus)
        ray.init(
            address="local",  # a new Ray even where RAY_ADDRESS or a `ray start` on this machine exists
            num_cpus=int(cpus) if cpus else None,
            num_gpus=num_gpus,
            include_dashboard=False,
            dashboard_host="127.0.0.1",  # even the minimal dashboard agent binds loopback only
            _node_ip_address="127.0.0.1",
            logging_level=logging.WARNING,
        )
        started = True
    return Cluster(started, _alive_nodes())


def local_gpus() -> int:
    """CUDA devices this process may use (``CUDA_VISIBLE_DEVICES`` honoured)."""
    import torch

    return torch.cuda.device_count()


def _alive_nodes() -> tuple[tuple[float, float], ...]:
    import ray

    nodes = []
    for node in ray.nodes():
        if node.get("Alive") or node.get("alive"):
            res = node.get("Resources", {})
            nodes.append((float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))))
    return tuple(nodes)


def plan_trials(
    wanted: Resources, study: Study, num_trials: int, cluster: Cluster, gpus: float | None, cpus: float | None
) -> Plan:
    """Resolve per-trial resources and concurrency; raise UserError for requests that cannot run."""
    if gpus is not None and gpus < 0:
        raise UserError(f"--gpus {gpus:g} must be >= 0")
    share = 0.0 if gpus == 0 else wanted.gpu
    trial = Resources(wanted.cpu, share)
    if not cluster.nodes:
        raise UserError("the Ray cluster has no alive nodes")
    max_node_cpus = max(c for c, _ in cluster.nodes)
    if trial.cpu > max_node_cpus:
        raise UserError(
            f"resources.cpu={trial.cpu:g} per trial, but the largest Ray node has {max_node_cpus:g} CPUs: "
            "the trials would stay PENDING forever; lower resources.cpu or add a bigger node"
        )
    budget = 0.0
    if share > 0:
        if cluster.gpus == 0:
            raise UserError(
                f"resources.gpu={share:g} per trial, but the Ray cluster has no GPUs; "
                "pass --gpus 0 for CPU trials"
            )
        if max(g for _, g in cluster.nodes) < share:
            raise UserError(f"resources.gpu={share:g} per trial, but no Ray node has that much of a GPU")
        budget = cluster.gpus if gpus is None else gpus
        if budget > cluster.gpus + 1e-9:
            raise UserError(f"--gpus {budget:g} is more than the {cluster.gpus:g} GPUs of the Ray cluster")
        if budget < share - 1e-9:
            raise UserError(f"--gpus {budget:g} is less than one trial's share (resources.gpu={share:g})")
    fits = 0
    for node_cpus, node_gpus in cluster.nodes:
        by_cpu = math.floor(node_cpus / trial.cpu + 1e-9)
        by_gpu = _trials_on_gpus(node_gpus, share) if share > 0 else by_cpu
        fits += min(by_cpu, by_gpu)
    if fits == 0:  # CPUs on one node, GPUs on another (a CPU-only head beside small GPU workers)
        nodes = ", ".join(f"{c:g} CPU + {g:g} GPU" for c, g in cluster.nodes)
        raise UserError(
            f"resources: {trial.cpu:g} CPU + {share:g} GPU per trial, but no Ray node has both ({nodes}): "
            "the trials would stay PENDING forever; lower resources.cpu or add a node that holds a trial"
        )
    limits = [fits, num_trials]
    if share > 0:
        limits.append(math.floor(budget / share + 1e-9))
    if cpus is not None:
        limits.append(max(1, math.floor(cpus / trial.cpu + 1e-9)))
    if study.max_concurrent:
        limits.append(study.max_concurrent)
    max_concurrent = max(1, min(limits))
    if not study.max_concurrent and num_trials > 1 and max_concurrent > max(1, num_trials // 4):
        # ray#14770: trials started together are sampled before any result is back, so with a large
        # part of the study in flight TPE (or CMA-ES) has little to learn from: close to random search
        log.warning(
            "%d of %d trials may run at once (all the resources allow): a model-based searcher "
            "samples all of them before any finishes; set study.max_concurrent to cap this",
            max_concurrent,
            num_trials,
        )
    return Plan(trial, max_concurrent, budget)


def _trials_on_gpus(node_gpus: float, share: float) -> int:
    """Trials of ``share`` GPU that fit on a node: Ray places a fractional request on one card, so
    the cards count separately (2 GPUs at 0.4 each: 2 per card, 4, not 2 / 0.4 = 5)."""
    if share >= 1:
        return math.floor(node_gpus / share + 1e-9)
    per_card = math.floor(1 / share + 1e-9)
    cards = math.floor(node_gpus + 1e-9)
    rest = node_gpus - cards  # a node with a fractional GPU count: its last, partial card
    return cards * per_card + (math.floor(rest / share + 1e-9) if rest > 1e-9 else 0)


def check_trial_device(devices: set[object], share: float) -> None:
    """Refuse ``run.device: cuda`` for trials that reserve no GPU: Ray 2.60 no longer hides the
    node's GPUs from them (ray#54868), so they would all land on cuda:0, unaccounted and uncapped."""
    cuda = sorted(str(d) for d in devices if str(d).startswith("cuda"))
    if share == 0 and cuda:
        raise UserError(
            f"run.device={cuda[0]} but the trials reserve no GPU (resources.gpu 0 or --gpus 0); "
            "set run.device: auto or cpu, or give each trial a GPU share"
        )
