"""bench/precision.py: the bf16-vs-fp32 curve comparison (CPU: fp32 only, bf16 skipped)."""

from __future__ import annotations

import math

import pytest
import torch

from ckd_search.engine import compile_options
from ckd_search.perf.precision import available
from ckd_search.perf.precision import compare
from ckd_search.perf.precision import main


def test_compare_reports_the_largest_relative_gap_and_accuracy_deltas():
    fp32 = [{"train_loss": 2.0, "test_acc": 0.5}, {"train_loss": 1.0, "test_acc": 0.7}]
    bf16 = [{"train_loss": 2.1, "test_acc": 0.75}, {"train_loss": 1.2, "test_acc": 0.6}]
    (cmp,) = compare({"fp32": fp32, "bf16": bf16}).values()
    assert cmp["max_rel_loss_gap"] == pytest.approx(0.2)
    assert cmp["final_acc_delta"] == pytest.approx(-0.1)
    assert cmp["best_acc_delta"] == pytest.approx(0.05)
    assert compare({"fp32": fp32}) == {}


def test_bf16_needs_cuda_and_fp32_runs_anywhere():
    assert available("bf16", torch.device("cpu")) is not None
    assert available("fp32", torch.device("cpu")) is None
    assert available("bf16", torch.device("cuda")) is None


def test_compile_modes_map_to_inductor_options():
    assert compile_options("default") == {"layout_optimization": False}
    assert compile_options("reduce-overhead")["triton.cudagraphs"] is True
    assert compile_options("max-autotune-no-cudagraphs")["max_autotune"] is True


def test_precision_smoke_trains_fp32_and_notes_the_skip(capsys, caplog):
    assert main(["--smoke", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert "fp32 train loss" in header and "bf16" not in header
    row = out.splitlines()[2].split("|")
    assert math.isfinite(float(row[2])) and 0.0 <= float(row[3]) <= 1.0
    assert "bf16 needs CUDA" in caplog.text
