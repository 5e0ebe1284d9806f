"""Safe defaults: loopback-only services, weights-only checkpoints, safe YAML, no eval/pickle of input."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ckd_search.cli import main

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(REPO / "ckd_search").rglob("*.py"), *(REPO / "trainables").rglob("*.py")])
FORBIDDEN = {
    "yaml.load(": re.compile(r"\byaml\.load\("),
    "yaml.unsafe_load": re.compile(r"\byaml\.unsafe_load\b|\bUnsafeLoader\b|Loader=yaml\.Loader\b"),
    "eval(": re.compile(r"(?<![\w.])eval\("),
    "exec(": re.compile(r"(?<![\w.])exec\("),
    "pickle.load": re.compile(r"\b(c?pickle|cloudpickle|dill)\.loads?\("),
    "weights_only=False": re.compile(r"weights_only\s*=\s*False"),
    "shell=True": re.compile(r"shell\s*=\s*True"),
}


def test_package_source_has_no_unsafe_loading():
    assert len(SOURCES) > 30
    found = []
    for path in SOURCES:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for name, pattern in FORBIDDEN.items():
                if pattern.search(code):
                    found.append(f"{path.relative_to(REPO)}:{number}: {name}: {line.strip()}")
    assert not found, "\n".join(found)


def test_every_torch_load_is_weights_only():
    calls = []
    for path in SOURCES:
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(", text):
            call = text[match.start() : text.index(")", match.start()) + 1]
            calls.append((path.name, call))
            assert "weights_only=True" in call, (path, call)
    assert calls  # checkpoints and teacher weights are loaded somewhere


class Payload:
    """Not a tensor: unpickling it would run arbitrary code in a less careful loader."""


def test_a_checkpoint_holding_objects_is_refused(tmp_path):
    from ckd_search.checkpoint import load_checkpoint
    from ckd_search.checkpoint import save_checkpoint
    from ckd_search.errors import UserError

    save_checkpoint(tmp_path, {"model": {"w": torch.zeros(2)}, "payload": Payload()})
    with pytest.raises(UserError, match="cannot be read"):
        load_checkpoint(tmp_path)


def test_yaml_tags_are_not_executed(tmp_path, capsys):
    marker = tmp_path / "pwned"
    space = tmp_path / "space.yaml"
    space.write_text(f"study: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["check-space", str(space)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ckd-search: error:") and "invalid YAML" in err and "\n" not in err
    config = tmp_path / "config.yaml"
    config.write_text(f"kd: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    assert not marker.exists()


def test_ui_binds_loopback_unless_asked(tmp_path, monkeypatch, capsys):
    import ckd_search.commands.search as commands

    calls = []
    monkeypatch.setattr(commands, "serve", lambda cmd, **kw: calls.append(cmd) or 0)
    (tmp_path / "mlflow.db").touch()
    assert main(["ui", str(tmp_path)]) == 0
    cmd = calls[-1]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "0.0.0.0" not in cmd
    assert "http://127.0.0.1:5000" in capsys.readouterr().out
    assert main(["ui", str(tmp_path), "--host", "0.0.0.0", "--port", "5001"]) == 0  # explicit only
    assert calls[-1][calls[-1].index("--host") + 1] == "0.0.0.0"


def test_a_local_ray_binds_loopback_without_dashboard(monkeypatch):
    import ray

    from ckd_search.search import resources

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw) or SimpleNamespace())
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}])
    cluster = resources.start_or_join(None, 2, 0)
    assert cluster.started_here and cluster.cpus == 2
    assert seen["_node_ip_address"] == "127.0.0.1"
    assert seen["include_dashboard"] is False and seen["dashboard_host"] == "127.0.0.1"
    assert seen["num_cpus"] == 2 and seen["num_gpus"] == 0


def test_local_test_clusters_bind_loopback(tmp_path):
    from ckd_search.search.chaos import LocalCluster

    cluster = LocalCluster(tmp_path)  # nothing starts before start_head/add_worker
    try:
        head, worker = cluster.head_args(), cluster.worker_args()
        assert head[head.index("--node-ip-address") + 1] == "127.0.0.1"
        assert head[head.index("--dashboard-host") + 1] == "127.0.0.1"
        assert head[head.index("--include-dashboard") + 1] == "false"
        assert worker[worker.index("--node-ip-address") + 1] == "127.0.0.1"
        assert cluster.address.startswith("127.0.0.1:")
    finally:
        cluster.shutdown()


def test_a_local_ray_gets_no_more_gpus_than_the_machine_has(monkeypatch):
    import ray

    from ckd_search.errors import UserError
    from ckd_search.search import resources

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw) or SimpleNamespace())
    monkeypatch.setattr(ray, "shutdown", lambda: seen.update(shutdown=True))
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0}}])
    monkeypatch.setattr(resources, "local_gpus", lambda: 1)
    assert resources.start_or_join(None, None, 1).gpus == 1
    assert seen["num_cpus"] is None  # Ray counts the CPUs (a container's limit included)
    seen.clear()
    with pytest.raises(UserError, match=r"--gpus 2: this machine has 1 GPU\(s\)"):
        resources.start_or_join(None, None, 2)
    assert seen == {}  # refused before Ray starts


def test_a_stopped_ui_stops_its_servers_whole_process_group(tmp_path):
    """`ckd-search ui` killed with SIGTERM (a scheduler, `kill`): the server it started and the
    workers that server started go too, so none is left holding the port."""
    import signal
    import subprocess
    import sys
    import time

    pids = tmp_path / "pids"
    server = (  # a stand-in for `mlflow ui`: it starts a worker, records both PIDs, waits
        "import os, subprocess, sys, time\n"
        "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{w.pid}}')\n"
        "time.sleep(120)\n"
    )
    driver = (
        "import sys\n"
        "from ckd_search.commands.search import serve\n"
        f"sys.exit(serve([sys.executable, '-c', {server!r}], grace_s=5.0))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", driver])
    deadline = time.monotonic() + 60
    while not pids.is_file() or len(pids.read_text().split()) < 2:
        assert time.monotonic() < deadline and proc.poll() is None, "the stand-in server did not start"
        time.sleep(0.1)
    started = [int(p) for p in pids.read_text().split()]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in started)


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead, only not yet reaped
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
