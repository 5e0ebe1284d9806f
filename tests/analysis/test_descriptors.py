"""Data-set descriptors computed by ``analyze`` for a run directory that lacks ``descriptors.json``
(the success path runs on a real search in ``tests/search/test_multiobjective.py``)."""

from __future__ import annotations

import math

import pytest

from ckd_search.analysis.descriptors import FILE_NAME
from ckd_search.analysis.descriptors import _config_values
from ckd_search.analysis.descriptors import descriptors_for_run


def test_a_data_set_not_on_this_machine_leaves_a_note(tmp_path):
    flat = {"trial_id": "t1", "data.dataset": "ncaltech101", "data.root": str(tmp_path / "missing")}
    notes: list[str] = []
    assert descriptors_for_run(tmp_path, flat, notes) == {}
    assert len(notes) == 1 and "could not be computed" in notes[0] and "\n" not in notes[0]
    assert not (tmp_path / FILE_NAME).exists()


def test_only_data_and_student_settings_are_taken_from_the_trial():
    import numpy as np

    flat = {
        "trial_id": "t1",
        "data.limit": np.int64(200),
        "data.size": np.float64(16.0),
        "data.root": math.nan,  # a missing value in a pandas column
        "model.width": 0.125,
        "run.seed": 7,
        "run.epochs": 9,
        "kd.k": 3.0,
        "final/best_test_acc": 0.5,
    }
    got = _config_values(flat)
    assert got == {
        "data.limit": 200,
        "data.size": 16.0,
        "data.root": None,
        "model.width": 0.125,
        "run.seed": 7,
    }
    assert type(got["data.limit"]) is int


def test_the_rgb_dvs_gap_runs_the_engines_cpu_lif_and_does_not_depend_on_it(tiny, monkeypatch):
    """The descriptors run the engine's CPU LIF (run.cpu_lif), fast on the driver: the fused kernel
    computes the same neuron, so the gap does not depend on which one a run used."""
    from ckd_search.analysis import descriptors
    from ckd_search.prepare import prepare

    swapped = []
    swap = descriptors.use_fused_cpu_lif
    monkeypatch.setattr(descriptors, "use_fused_cpu_lif", lambda student: swapped.append(swap(student)))
    fused = tiny(**{"run.cpu_lif": "fused"})
    prepared = prepare(fused)
    got = descriptors.rgb_dvs_cka(prepared, fused, max_samples=32)
    assert len(swapped) == 1
    want = descriptors.rgb_dvs_cka(prepared, fused.replace(**{"run.cpu_lif": "spikingjelly"}), max_samples=32)
    assert len(swapped) == 1 and len(got) == fused.data.timesteps and 0.0 < min(got)
    assert got == pytest.approx(want, abs=1e-5)
