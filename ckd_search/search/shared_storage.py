"""Is a local storage path one file system on every Ray node? (search.md pitfall 8)

Ray Tune writes a marker into a local ``storage_path`` on the driver and checks for it on a worker
only when the worker saves its first checkpoint: on a cluster whose nodes do not share the path
(the driver's own disk, not NFS), every trial placed elsewhere trains an epoch, fails, is retried
and fails again. :func:`check_storage_shared` asks every alive node up front instead, with a 0-CPU
task pinned to it, and refuses the search naming the nodes that cannot see the path.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from ckd_search.errors import UserError
from ckd_search.search.settings import is_uri

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 120.0  # starting a worker process on each node takes seconds, not minutes


def _exists(path: str) -> bool:
    return os.path.exists(path)


def alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def nodes_missing(path: str, timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
    """Addresses of the alive nodes on which ``path`` does not exist (GetTimeoutError past timeout_s)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_exists)
    nodes = alive_nodes()
    pinned = [NodeAffinitySchedulingStrategy(n["NodeID"], soft=False) for n in nodes]
    refs = [probe.options(scheduling_strategy=where).remote(path) for where in pinned]
    seen = ray.get(refs, timeout=timeout_s)
    return [str(n["NodeManagerAddress"]) for n, ok in zip(nodes, seen, strict=True) if not ok]


def check_storage_shared(storage_path: str) -> None:
    """Refuse a local ``storage_path`` that some alive node of the joined cluster cannot see.

    A marker with a fresh name is written there (a name never looked up before, so no NFS client
    answers from a cached miss), each node is asked whether it exists, and the marker is removed.
    URIs (``s3://``) and single-node clusters need no check; a node that does not answer in
    :data:`PROBE_TIMEOUT_S` only gives a warning (Tune's own check still runs at the first checkpoint).
    """
    if is_uri(storage_path) or len(alive_nodes()) < 2:
        return
    from ray.exceptions import GetTimeoutError

    marker = Path(storage_path) / f".ckd-search-probe-{uuid.uuid4().hex}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    try:
        missing = nodes_missing(str(marker))
    except GetTimeoutError:
        log.warning("%s: not every Ray node answered whether it sees this storage path", storage_path)
        return
    finally:
        marker.unlink(missing_ok=True)
    if missing:
        raise UserError(
            f"storage {storage_path} is not visible from Ray node(s) {', '.join(missing)}: trials there "
            "could not save checkpoints; mount it at the same path on every node (NFS) and pass "
            "--storage, or use --storage s3://..."
        )
