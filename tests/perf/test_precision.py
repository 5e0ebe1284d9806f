"""bench/precision.py: the bf16-vs-fp32 curve comparison, with a second fp32 seed as the noise floor."""

from __future__ import annotations

import math

import pytest

from ckd_search.config import Config
from ckd_search.engine import compile_options
from ckd_search.perf.precision import compare
from ckd_search.perf.precision import main
from ckd_search.perf.precision import runs


def test_compare_reports_the_largest_relative_gap_and_accuracy_deltas():
    fp32 = [{"train_loss": 2.0, "test_acc": 0.5}, {"train_loss": 1.0, "test_acc": 0.7}]
    bf16 = [{"train_loss": 2.1, "test_acc": 0.75}, {"train_loss": 1.2, "test_acc": 0.6}]
    (cmp,) = compare({"fp32": fp32, "bf16": bf16}).values()
    assert cmp["max_rel_loss_gap"] == pytest.approx(0.2)
    assert cmp["final_acc_delta"] == pytest.approx(-0.1)
    assert cmp["best_acc_delta"] == pytest.approx(0.05)
    assert compare({"fp32": fp32}) == {}


def test_the_noise_floor_run_differs_from_the_reference_only_in_the_seed():
    plan = runs(Config.from_dict({"run.seed": 7}))
    assert plan["fp32"] == {"run.precision": "fp32"}
    assert plan["bf16"] == {"run.precision": "bf16"}
    assert plan["fp32 seed 8"] == {"run.precision": "fp32", "run.seed": 8}
    assert list(runs(Config(), noise_floor=False)) == ["fp32", "bf16"]


def test_compile_modes_map_to_inductor_options():
    assert compile_options("default") == {"layout_optimization": False}
    assert compile_options("reduce-overhead")["triton.cudagraphs"] is True
    assert compile_options("max-autotune-no-cudagraphs")["max_autotune"] is True


def test_precision_smoke_trains_every_run_on_a_cpu(capsys):
    assert main(["--smoke", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0]
    for name in ("fp32 train loss", "bf16 train loss", f"fp32 seed {Config().run.seed + 1} train loss"):
        assert name in header
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    losses, accs = cells[1::2], cells[2::2]
    assert all(math.isfinite(float(v)) for v in losses)
    assert all(0.0 <= float(v) <= 1.0 for v in accs)
    assert any(line.startswith("bf16 vs fp32: max relative train-loss gap") for line in lines)
    assert lines[-1].startswith("device: CPU")
