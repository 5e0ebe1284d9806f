"""``ckd-search train``: a run continues with ``--out DIR --resume`` alone, and a changed config is
refused with the keys that changed."""

from __future__ import annotations

import json

import pytest
import yaml

from ckd_search.cli import main
from ckd_search.config import config_differences
from tests.conftest import TINY_SEARCH_CONFIG


def test_config_differences_name_the_changed_keys():
    old = {"kd": {"k": 1.0, "e_th": 2.0}, "model": {"width": 1.0}}
    new = {"kd": {"k": 3.0, "e_th": 2.0}, "model": {"width": 1.0, "bn_statistics": "per_step"}}
    assert config_differences(old, new) == "kd.k: 1.0 -> 3.0, model.bn_statistics: (absent) -> per_step"
    assert config_differences(old, old) == ""
    many = {"a": 1, "b": 2, "c": 3, "d": 4}
    assert config_differences(many, {}, most=2) == "a: 1 -> (absent), b: 2 -> (absent) and 2 more"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-epoch tiny run made with --config."""
    root = tmp_path_factory.mktemp("train")
    config = root / "tiny.yaml"
    flat = {**TINY_SEARCH_CONFIG, "data.cache_dir": str(root / "cache"), "run.device": "cpu"}
    config.write_text(yaml.safe_dump(flat))
    out = root / "run"
    assert main(["train", "--config", str(config), "--out", str(out)]) == 0
    return config, out


def test_resume_alone_continues_with_the_saved_config(trained, capsys):
    _, out = trained
    assert main(["train", "--out", str(out), "--resume"]) == 0  # no --config: the saved one
    result = json.loads((out / "result.json").read_text())
    assert result["epochs_run"] == 2
    assert [row["epoch"] for row in json.loads((out / "metrics.json").read_text())] == [1, 2]


def test_resume_with_a_changed_config_names_the_key(trained, capsys):
    config, out = trained
    before = (out / "config.yaml").read_text()
    assert main(["train", "--config", str(config), "--set", "kd.k=3.0", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "kd.k: 100.0 -> 3.0" in err
    assert (out / "config.yaml").read_text() == before


# --- placement on resume, no overwritten run, one-line failures, no half-written folders


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory):
    """``--set`` pairs for a 1-epoch tiny run, its data cached once for the module."""
    cache = tmp_path_factory.mktemp("train-cache")
    flat = {**TINY_SEARCH_CONFIG, "run.epochs": 1, "data.cache_dir": str(cache)}

    def sets(**changes):
        return [f"{k}={v}" for k, v in {**flat, **changes}.items()]

    return sets


def test_resume_may_change_placement_only(tiny_sets, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", *tiny_sets()]) == 0
    assert main(["train", "--out", str(out), "--resume", "--set", *tiny_sets(**{"run.threads": 1})]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["threads"] == 1  # the new value is saved
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--set", *tiny_sets(**{"kd.k": 3.0})]) == 2
    assert "kd.k: 100.0 -> 3.0" in capsys.readouterr().err


def test_resume_of_a_run_made_on_a_device_this_machine_lacks(tiny_sets, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", *tiny_sets()]) == 0
    saved = out / "config.yaml"
    on_gpu = saved.read_text().replace("device: cpu", "device: cuda:99")  # no machine has it
    saved.write_text(on_gpu)
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cuda:99" in err and "--set run.device=cpu" in err
    assert saved.read_text() == on_gpu
    assert main(["train", "--out", str(out), "--resume", "--set", "run.device=cpu"]) == 0  # as suggested
    assert yaml.safe_load(saved.read_text())["run"]["device"] == "cpu"


def test_a_run_saved_without_a_checkpoint_is_not_overwritten(tiny_sets, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", *tiny_sets(**{"run.checkpoint_every": 0})]) == 0
    wrote = capsys.readouterr().out.splitlines()[-1]
    assert (
        wrote.startswith("wrote") and not wrote.endswith("checkpoint/") and not (out / "checkpoint").exists()
    )
    before = {p.name: p.read_text() for p in out.iterdir()}
    assert main(["train", "--out", str(out), "--set", *tiny_sets()]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert {p.name: p.read_text() for p in out.iterdir()} == before


def test_a_non_finite_loss_is_one_line_and_leaves_no_run(tiny_sets, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["train", "--out", str(out), "--set", *tiny_sets(**{"optim.lr": 1e6, "optim.min_lr": 0})]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ckd-search: error:") and "non-finite" in err
    assert not out.exists()  # nothing to resume, so a rerun into the same --out is allowed


def test_a_refused_run_removes_only_what_it_wrote(tiny_sets, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    too_big = tiny_sets(**{"optim.batch_size": 500})  # larger than the 200-sample train split
    assert main(["train", "--out", str(mine), "--set", *too_big]) == 2
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert main(["train", "--out", str(tmp_path / "new" / "deep" / "x"), "--set", *too_big]) == 2
    assert not (tmp_path / "new").exists()
    assert "optim.batch_size=500" in capsys.readouterr().err
