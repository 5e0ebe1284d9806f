"""Imports read from disk ahead of time, in a child process (never this interpreter's import locks)."""

import os
import pickle
import subprocess
import sys

from ckd_search.search import import_ahead
from ckd_search.search.import_ahead import ENGINE_MODULES
from ckd_search.search.import_ahead import REPORT_MODULES
from ckd_search.search.import_ahead import ImportAhead
from ckd_search.search.import_ahead import importing


def child_errors(modules: list[str] | tuple[str, ...]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", import_ahead._CHILD, *modules], capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0
    return out.stderr


def test_the_modules_ahead_all_exist():
    assert child_errors(ENGINE_MODULES + REPORT_MODULES) == ""


def test_a_failing_import_is_reported_not_raised():
    assert "ckd_search.no_such_module" in child_errors(["json", "ckd_search.no_such_module"])


def probe(tmp_path, monkeypatch, name: str):
    """A module that records which process imported it."""
    (tmp_path / f"{name}.py").write_text(
        f"import os\nopen({str(tmp_path / (name + '.pid'))!r}, 'w').write(str(os.getpid()))\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path / f"{name}.pid"


def test_imports_once_in_a_child_at_the_first_trial_start(tmp_path, monkeypatch):
    pid_file = probe(tmp_path, monkeypatch, "ahead_probe")
    callback = ImportAhead(["ahead_probe"])
    callback.on_trial_start(0, [], trial=None)
    first = callback.child
    callback.on_trial_start(1, [], trial=None)
    assert callback.child is first and first is not None  # started once
    assert first.wait(timeout=60) == 0
    assert int(pid_file.read_text()) == first.pid != os.getpid()
    assert "ahead_probe" not in sys.modules  # this interpreter imported nothing
    restored = pickle.loads(pickle.dumps(callback))  # Tune may snapshot its callbacks
    assert restored.modules == ("ahead_probe",) and restored.child is None and not restored.started


def test_importing_reads_the_modules_in_a_child_during_the_block(tmp_path, monkeypatch):
    pid_file = probe(tmp_path, monkeypatch, "ahead_block")
    with importing(["ahead_block", "ckd_search.no_such_module"]):
        pass
    for child in import_ahead._PENDING:  # the block does not wait for a child still running
        child.wait(timeout=60)
    assert pid_file.is_file() and int(pid_file.read_text()) != os.getpid()
    assert "ahead_block" not in sys.modules
