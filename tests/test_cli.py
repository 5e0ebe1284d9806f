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


@pytest.mark.parametrize(
    ("flags", "shown"),
    [
        (["--num-trials", "50"], "drop --num-trials 50"),
        (["--set", "run.epochs=3", "kd.k=1"], "drop --set run.epochs=3 kd.k=1"),
        (["--set"], "drop --set\n"),  # a bare --set is given too (an empty list, not None)
        (["--out", "elsewhere"], "drop --out elsewhere"),
        (["--storage", "/nfs/x"], "drop --storage /nfs/x"),
        (["--mlflow-uri", "http://m:5000"], "drop --mlflow-uri http://m:5000"),
        (["--num-trials", "5", "--out", "o"], "drop --num-trials 5, --out o"),
    ],
)
def test_resume_refuses_flags_of_a_new_search(tmp_path, capsys, flags, shown):
    assert cli.main(["search", "--resume", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ckd-search: error: --resume RUN_DIR continues a search as it was")
    assert shown in err and err.count("\n") == 1


def test_resume_lets_the_cluster_change(tmp_path, capsys):
    # --address/--cpus/--gpus pass the flag check; the empty RUN_DIR is what fails (no settings)
    flags = ["--address", "auto", "--cpus", "2", "--gpus", "0"]
    assert cli.main(["search", "--resume", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert "drop" not in err and str(tmp_path) in err


def test_ray_client_addresses_are_refused_before_anything_is_written(tmp_path, capsys):
    args = ["search", "--space", "search_spaces/demo.yaml", "--out", str(tmp_path / "run")]
    assert cli.main([*args, "--address", "ray://head:10001"]) == 2
    err = capsys.readouterr().err
    assert "argument --address: 'ray://head:10001': Ray Client addresses are not supported" in err
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_config_lists_keys_with_defaults_and_meaning(capsys):
    assert cli.main(["config", "kd."]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith("kd.") for line in lines)
    assert any(line.startswith('kd.schedule = "phased"') and "# gamma" in line for line in lines)
    assert any(line.startswith("kd.e_th = null") for line in lines)
    assert cli.main(["config", "nope"]) == 2


def test_too_many_gpus_for_a_new_search_are_refused_before_its_run_folder(
    tmp_path, capsys, monkeypatch, tiny_search_config
):
    import sys

    from ckd_search.search import resources
    from tests.helpers import two_key_space

    monkeypatch.setattr(resources, "local_gpus", lambda: 0)
    if "ray" in sys.modules:  # a Ray another test left running would take the --gpus as logical ones
        monkeypatch.setattr(sys.modules["ray"], "is_initialized", lambda: False)
    space, out = two_key_space(tmp_path, tiny_search_config), tmp_path / "run"
    assert cli.main(["search", "--space", str(space), "--gpus", "2", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "--gpus 2: this machine has 0 GPU(s)" in captured.err
    assert "run directory" not in captured.out and not out.exists()


def test_a_resume_flag_that_is_refused_is_not_kept(tmp_path, capsys, monkeypatch, tiny_search_config):
    from ckd_search.search import resources
    from ckd_search.search.tuner import create_search
    from tests.helpers import two_key_space

    settings = create_search(two_key_space(tmp_path, tiny_search_config), out=tmp_path / "run")
    saved = (tmp_path / "run" / "search.yaml").read_bytes()
    monkeypatch.setattr(resources, "local_gpus", lambda: 0)
    assert cli.main(["search", "--resume", str(tmp_path / "run"), "--gpus", "2"]) == 2
    assert "--gpus 2: this machine has 0 GPU(s)" in capsys.readouterr().err
    assert (tmp_path / "run" / "search.yaml").read_bytes() == saved  # the next resume is not refused too
    assert settings.gpus is None


def test_each_set_flag_adds_its_values(capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--set", "run.epochs=3", "--set", "kd.k=2", "loss.beta=1"])
    assert args.set == ["run.epochs=3", "kd.k=2", "loss.beta=1"]
    assert cli.main(["train", "--set", "run.epochs=1", "--set", "run.epochs=2"]) == 2
    assert "--set run.epochs is given twice" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("010", 10),
        ("-007", -7),
        ("1_000", 1000),
        ("0x10", 16),
        ("1:30", "1:30"),
        ("1e-3", "1e-3"),
        ("yes", True),
    ],
)
def test_set_values_read_as_config_files_read_them(raw, value):
    """Leading zeros are decimal (YAML 1.1 reads 010 as eight) and 1:30 is no base-60 number."""
    assert cli.parse_overrides([f"data.limit={raw}"]) == {"data.limit": value}
