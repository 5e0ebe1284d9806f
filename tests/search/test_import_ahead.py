"""The demo's report imports, done in the background once trials start."""

import pickle
import subprocess
import sys

from ckd_search.search.import_ahead import ENGINE_MODULES
from ckd_search.search.import_ahead import REPORT_MODULES
from ckd_search.search.import_ahead import ImportAhead
from ckd_search.search.import_ahead import import_all
from ckd_search.search.import_ahead import importing


def test_report_modules_all_exist():
    assert import_all(REPORT_MODULES) == []


def test_a_failing_import_is_reported_not_raised():
    assert import_all(["json", "ckd_search.no_such_module"]) == ["ckd_search.no_such_module"]


def test_imports_once_in_a_background_thread_at_the_first_trial_start(tmp_path, monkeypatch):
    (tmp_path / "ahead_probe.py").write_text("import threading\nTHREAD = threading.current_thread().name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ahead_probe", raising=False)
    callback = ImportAhead(["ahead_probe"])
    callback.on_trial_start(0, [], trial=None)
    first = callback.thread
    callback.on_trial_start(1, [], trial=None)
    assert callback.thread is first  # started once
    assert first is not None
    first.join(timeout=30)
    assert sys.modules["ahead_probe"].THREAD == "ckd-import-ahead"
    restored = pickle.loads(pickle.dumps(callback))  # Tune may snapshot its callbacks
    assert restored.modules == ("ahead_probe",) and restored.thread is None


def test_importing_loads_the_modules_by_the_end_of_the_block(tmp_path, monkeypatch):
    (tmp_path / "ahead_block.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ahead_block", raising=False)
    with importing(["ahead_block", "ckd_search.no_such_module"]):
        pass
    assert sys.modules["ahead_block"].LOADED


def test_engine_modules_import_nothing_of_ray():
    """They load in a thread during ray.init: sharing no module with Ray, no import lock is shared."""
    code = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *ENGINE_MODULES], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
