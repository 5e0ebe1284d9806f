"""The program entry point and the one-line error rule shared by the CLI and the bench scripts."""

import gc
import tomllib
from pathlib import Path

import pytest

from ckd_search import cli
from ckd_search.errors import UserError
from ckd_search.errors import exit_code

REPO = Path(__file__).resolve().parents[1]


def test_console_script_runs_main_and_exits_with_its_code(monkeypatch):
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ckd-search"] == "ckd_search.cli:run"
    monkeypatch.setattr(cli, "main", lambda: 3)
    try:
        with pytest.raises(SystemExit) as stop:
            cli.run()
        assert stop.value.code == 3
        assert gc.get_freeze_count() > 0  # the final collection at exit skips these objects
    finally:
        gc.unfreeze()


def test_exit_code_turns_a_user_error_into_one_line_and_2(capsys):
    def bad() -> int:
        raise UserError("--trials 'x': expected\n   positive integers")

    assert exit_code(bad, "packing") == 2
    assert capsys.readouterr().err == "packing: error: --trials 'x': expected positive integers\n"
    assert exit_code(lambda: None, "packing") == 0
    assert exit_code(lambda: 1, "packing") == 1


def test_exit_code_lets_other_errors_through():
    def broken() -> int:
        raise RuntimeError("a bug, with its traceback")

    with pytest.raises(RuntimeError):
        exit_code(broken, "packing")
