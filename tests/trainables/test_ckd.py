"""The trial process's setup (trainables.ckd.configure_process)."""

from __future__ import annotations

import logging

import pytest
import torch

from trainables import ckd


@pytest.fixture
def trial_process(monkeypatch, tmp_path):
    """configure_process without touching this process's threads or cache settings for good."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_trial_holding_a_gpu_that_cuda_cannot_see_says_it_trains_on_the_cpu(
    trial_process, monkeypatch, caplog
):
    import ray

    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [3])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger=ckd.__name__):
        assert ckd.configure_process(1.0, 0.5) is False
    (message,) = _warnings(caplog)
    assert "holds 0.5 GPU (ids [3]) but torch sees no CUDA device" in message and "run.device=cuda" in message
    assert torch.get_num_threads() == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=ckd.__name__):
        assert ckd.configure_process(1.0, 0.5, "cpu") is False  # the user chose the CPU
    assert _warnings(caplog) == []


def test_a_usable_gpu_share_caps_the_trials_memory(trial_process, monkeypatch):
    import ray

    shares = []
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [0])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "set_per_process_memory_fraction", lambda f, device: shares.append((f, device))
    )
    assert ckd.configure_process(2.0, 0.25) is True
    assert ckd.configure_process(2.0, 1.0) is True
    assert shares == [(0.25, 0)]  # a whole card is not capped


def test_a_cpu_trial_says_nothing(trial_process, monkeypatch, caplog):
    import ray

    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    with caplog.at_level(logging.WARNING, logger=ckd.__name__):
        assert ckd.configure_process(2.0, 0.0) is False
    assert _warnings(caplog) == [] and torch.get_num_threads() == 2
