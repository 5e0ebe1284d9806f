"""``ckd-search demo`` end to end on a tiny space: search, export, report; a second call only reports."""

from __future__ import annotations

import pytest
import yaml

from ckd_search.cli import main

pytestmark = pytest.mark.slow


def test_demo_searches_exports_and_reports_once(tmp_path, tiny_fixed, capsys, ray_cleanup):
    space = tmp_path / "demo.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "study": {"name": "demo", "metric": "best_test_acc", "mode": "max", "num_trials": 2},
                "fixed": {**tiny_fixed, "run.epochs": 2, "run.device": "cpu"},
                "space": {"kd.k": {"type": "loguniform", "low": 0.1, "high": 100.0}},
                "searcher": "random",
                "resources": {"cpu": 1, "gpu": 0},
            },
            sort_keys=False,
        )
    )
    out = tmp_path / "demo"
    assert main(["demo", "--space", str(space), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (out / "export" / "trials.parquet").is_file() and (out / "export" / "best_1.yaml").is_file()
    assert (out / "report" / "report.html").is_file()
    assert f"retrain the best config: ckd-search train --config {out / 'export' / 'best_1.yaml'}" in printed
    assert "exported 2 trials" in printed and "the switching report:" in printed

    # Run again: the finished search is reported and exported again, not searched again.
    journal = (out / "optuna.journal").read_bytes()
    assert main(["demo", "--space", str(space), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "already holds a finished demo search" in printed and "exported 2 trials" in printed
    assert (out / "optuna.journal").read_bytes() == journal  # no trial was added
