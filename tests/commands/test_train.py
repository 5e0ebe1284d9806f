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
