"""``ckd-search data build|inspect``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from ckd_search.cli import main
from ckd_search.data.commands import config_from_args
from ckd_search.data.commands import run_data_command
from ckd_search.errors import ConfigError
from ckd_search.errors import UserError


def args(action: str, tmp_path: Path, *sets: str, json_out: bool = False, **kw: object) -> argparse.Namespace:
    values = {
        "action": action,
        "dataset": "digits_dvs",
        "root": None,
        "timesteps": None,
        "size": None,
        "set": [f"cache_dir={tmp_path / 'cache'}", "limit=12", *sets],
        "json": json_out,
    }
    values.update(kw)
    return argparse.Namespace(**values)


def test_build_then_cached(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_data_command(args("build", tmp_path, timesteps=4, size=16)) == 0
    out = capsys.readouterr().out
    assert "digits_dvs" in out and "built" in out and "12 / 12" in out and "[N, 4, 2, 16, 16]" in out
    assert run_data_command(args("build", tmp_path, timesteps=4, size=16, json_out=True)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "cached" and report["classes"] == 10
    assert report["train_samples"] == 12 and report["timesteps"] == 4 and report["size"] == 16
    assert report["image_size"] == 28  # teacher.input_size
    assert Path(report["cache_files"]["train"]).is_file()
    assert str(tmp_path) in report["cache_files"]["train"]


def test_a_rebuilt_invalid_cache_reports_built(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_data_command(args("build", tmp_path, json_out=True)) == 0
    train = Path(json.loads(capsys.readouterr().out)["cache_files"]["train"])
    blob = bytearray(train.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # the files still exist, but their hash no longer matches
    train.write_bytes(bytes(blob))
    assert run_data_command(args("build", tmp_path, json_out=True)) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "built"
    assert run_data_command(args("build", tmp_path, json_out=True)) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "cached"


def test_inspect_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_data_command(args("inspect", tmp_path, "teacher.input_size=20")) == 0
    out = capsys.readouterr().out
    assert "class" in out and "total" in out and "events/sample" in out and "median" in out
    assert "images 20x20" in out
    assert run_data_command(args("inspect", tmp_path, "teacher.input_size=20", json_out=True)) == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in report["classes"]] == [str(d) for d in range(10)]
    assert sum(c["train"] for c in report["classes"]) == 12
    assert set(report["events_per_sample"]["test"]) == {"mean", "std", "min", "median", "max"}


def test_set_keys_with_or_without_prefix(tmp_path: Path) -> None:
    cfg = config_from_args(
        args(
            "build",
            tmp_path,
            "data.split_seed=3",
            "simulator.contrast=0.25",
            "teacher.input_size=32",
            size=20,
        )
    )
    assert cfg.data.split_seed == 3 and cfg.data.simulator.contrast == 0.25
    assert cfg.teacher.input_size == 32 and cfg.data.size == 20 and cfg.data.limit == 12
    with pytest.raises(ConfigError, match="data.bogus"):
        config_from_args(args("build", tmp_path, "bogus=1"))


def test_bad_input_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserError, match=r"data.root=.*nowhere' is not an existing folder"):
        run_data_command(args("build", tmp_path, dataset="ncaltech101", root=str(tmp_path / "nowhere")))
    code = main(["data", "build", "--dataset", "cepdvs", "--set", f"cache_dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "data.root=None must be set" in err
    code = main(["data", "inspect", "--dataset", "ncaltech101", "--root", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "is not an existing folder" in err and "\n" not in err
