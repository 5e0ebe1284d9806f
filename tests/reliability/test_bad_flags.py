"""Bad command-line flags: exit 2, one line naming the flag or value, nothing written, no traceback.

The flag-level counterpart of test_bad_input.py (which covers space and config files): numbers out
of range, an ``--out`` that is a file, a key given twice, and the ``ckd-search --space`` shortcut.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from ckd_search.cli import main
from tests.reliability.test_bad_input import VALID


def error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and ": error: " in lines[0], captured.err
    return lines[0]


@pytest.fixture
def space(tmp_path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(VALID, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["search", "--space", "{space}", "--gpus", "-1"], "--gpus: -1 must be a finite number >= 0"),
        (["search", "--space", "{space}", "--gpus", "inf"], "--gpus: inf must be a finite number >= 0"),
        (["search", "--space", "{space}", "--cpus", "nan"], "--cpus: 'nan' is not an integer"),
        (["search", "--space", "{space}", "--cpus", "0.5"], "--cpus: '0.5' is not an integer"),
        (["search", "--space", "{space}", "--cpus", "0"], "--cpus: 0 must be >= 1"),
        (["search", "--space", "{space}", "--gpus", "two"], "--gpus: 'two' is not a number"),
        (["train", "--set", "kd.k=1", "kd.k=2"], "--set kd.k is given twice"),
        (["train", "--set", "run.device=gpu"], "run.device='gpu' must be auto, cpu, cuda or cuda:N"),
        (["train", "--set", "run.device=cuda"], "no CUDA device"),  # refused in fit: the folder goes
        (["reproduce", "--set", "run.device=cuda"], "no CUDA device"),
        (["ui", "{out}", "--port", "99999"], "--port: '99999' is not a TCP port"),
        (["ui", "{out}"], "out: no such run directory"),
        (["export", "{out}"], "out: no such run directory"),
        (["train", "--set", "kd.temprature=2"], "kd.temprature=2 is not a known key"),
        (["train", "--set", "foo.bar=1"], "foo.bar=1 is not a known key"),
        (["bench", "profile", "--smoke", "--steps", "-1"], "--steps: -1 must be >= 1"),
        (["bench", "step", "--smoke", "--device", "gpu"], "--device='gpu' is not a device"),
    ],
    ids=lambda v: "_".join(v) if isinstance(v, list) else None,
)
def test_a_bad_flag_is_one_line_and_writes_nothing(tmp_path, space, capsys, monkeypatch, args, needle):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the cuda cases, on any machine
    out = tmp_path / "out"
    argv = [a.format(space=space, out=out) for a in args]
    if args[0] in ("search", "train", "reproduce"):
        argv += ["--out", str(out)]
    assert main(argv) == 2
    assert needle in error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("command", ["train", "search", "analyze", "reproduce"])
def test_an_out_that_is_a_file_is_refused_and_kept(tmp_path, space, capsys, command):
    out = tmp_path / "taken"
    out.write_text("mine")
    argv = {
        "train": ["train", "--set", "run.device=cpu"],
        "search": ["search", "--space", str(space)],
        "analyze": ["analyze", str(tmp_path)],
        "reproduce": ["reproduce", "--set", "run.device=cpu"],
    }[command]
    assert main([*argv, "--out", str(out)]) == 2
    assert f"--out {out}: exists and is not a directory" in error_line(capsys)
    assert out.read_text() == "mine"


@pytest.mark.parametrize("command", ["train", "search", "analyze"])
def test_an_out_this_user_cannot_write_is_refused_in_one_line(tmp_path, space, capsys, monkeypatch, command):
    """A read-only --out (os.access is faked: the tests run as root, who may write anywhere)."""
    import ckd_search.storage

    out = tmp_path / "locked"
    out.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        ckd_search.storage.os, "access", lambda p, mode: Path(p) != out and real_access(p, mode)
    )
    argv = {
        "train": ["train", "--set", "run.device=cpu"],
        "search": ["search", "--space", str(space)],
        "analyze": ["analyze", str(tmp_path)],
    }[command]
    assert main([*argv, "--out", str(out)]) == 2
    assert f"--out {out}: not writable (permission denied)" in error_line(capsys)
    assert list(out.iterdir()) == []


def test_a_permission_error_anywhere_is_one_line_naming_the_path(capsys):
    from ckd_search.errors import exit_code

    def locked() -> int:
        raise PermissionError(13, "Permission denied", "/runs/a/driver.lock")

    assert exit_code(locked, "ckd-search") == 2
    assert capsys.readouterr().err == "ckd-search: error: /runs/a/driver.lock: permission denied\n"


@pytest.mark.parametrize(
    "argv",
    [["-v", "--space", "{missing}"], ["--gpus", "0", "--space", "{missing}", "--out", "demo"]],
    ids=["global-flag-first", "a-value-named-like-a-command"],
)
def test_the_space_shortcut_finds_the_search_command(tmp_path, capsys, argv):
    missing = tmp_path / "missing.yaml"
    assert main([a.format(missing=missing) for a in argv]) == 2
    assert f"{missing}: no such file" in error_line(capsys)


def test_a_folder_given_as_a_yaml_file_is_named_so(tmp_path, capsys):
    assert main(["check-space", str(tmp_path)]) == 2
    assert f"{tmp_path}: a directory, not a YAML file" in error_line(capsys)


def test_data_commands_check_the_root_of_any_data_set(tmp_path, capsys):
    assert main(["data", "inspect", "--root", str(tmp_path / "nowhere")]) == 2  # digits_dvs reads none
    assert "data.root=" in error_line(capsys)


def test_analyze_names_an_unreadable_settings_file(tmp_path, capsys):
    (tmp_path / "search.yaml").write_text("a: [1\n")
    assert main(["analyze", str(tmp_path), "--out", str(tmp_path / "report")]) == 2
    assert "search.yaml unreadable" in error_line(capsys)


def test_a_storage_path_under_a_file_is_refused_before_anything_starts(tmp_path, space, capsys):
    (tmp_path / "f").write_text("mine")
    out = tmp_path / "out"
    argv = ["search", "--space", str(space), "--out", str(out), "--storage", str(tmp_path / "f" / "sub")]
    assert main(argv) == 2
    assert f"--storage {tmp_path / 'f' / 'sub'}: cannot be created" in error_line(capsys)
    assert not out.exists() and (tmp_path / "f").read_text() == "mine"


def test_ui_on_a_port_in_use_is_refused(tmp_path, capsys):
    import socket

    (tmp_path / "mlflow.db").write_bytes(b"")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["ui", str(tmp_path), "--port", str(port)]) == 2
    assert f"--port {port}: cannot listen on 127.0.0.1" in error_line(capsys)


def test_train_resume_without_out_names_the_missing_flag(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume"]) == 2
    assert "--resume continues the run in --out DIR: give --out" in error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_search_stopped_before_its_first_trial_leaves_no_folder(tmp_path, space, monkeypatch):
    """Ctrl-C during Ray's start or the data preparation: no half-made run folder that a new
    search into the same --out would refuse ("already holds a search")."""
    import ckd_search.search.tuner
    from ckd_search.analysis.descriptors import FILE_NAME

    out = tmp_path / "run"

    def stopped(settings, **_):
        (out / FILE_NAME).write_text("{}")  # prepared, descriptors written, no trial yet
        raise KeyboardInterrupt

    monkeypatch.setattr(ckd_search.search.tuner, "run_search", stopped)
    assert main(["search", "--space", str(space), "--out", str(out), "--gpus", "0"]) == 130
    assert not out.exists()


def test_ctrl_c_while_ray_starts_shuts_the_half_started_ray_down(tmp_path, space, monkeypatch):
    import ray

    import ckd_search.search.resources
    from ckd_search.search.tuner import create_search
    from ckd_search.search.tuner import run_search

    started, shut = [], []
    monkeypatch.setattr(ray, "is_initialized", lambda: bool(started))
    monkeypatch.setattr(ray, "shutdown", lambda: shut.append(True))

    def interrupted(*_):
        started.append(True)  # ray.init got far enough to leave processes behind
        raise KeyboardInterrupt

    monkeypatch.setattr(ckd_search.search.resources, "start_or_join", interrupted)
    settings = create_search(space, out=tmp_path / "run", gpus=0)
    with pytest.raises(KeyboardInterrupt):
        run_search(settings)
    assert shut == [True]


def test_resume_refuses_a_space_edited_since_the_search_started(tmp_path, space, capsys):
    """New trials would come from another space than the study's, and analyze would read the edit."""
    from ckd_search.search.settings import SearchSettings
    from ckd_search.search.tuner import create_search

    settings = create_search(space, out=tmp_path / "run", gpus=0)
    assert SearchSettings.load(settings.root).space_sha256  # recorded as it started
    copy = settings.space_file
    copy.write_text(copy.read_text().replace("high: 4.0", "high: 9.0") + "\n# edited\n")
    assert main(["search", "--resume", str(settings.root)]) == 2
    line = error_line(capsys)
    assert f"{copy}: edited since the search started" in line
