"""Teacher logits cached on disk are used only for the data files and format they were made for."""

from __future__ import annotations

import torch

from ckd_search.prepare import TEACHER_FORMAT
from ckd_search.prepare import _read_logits
from ckd_search.prepare import _write_logits


def test_cached_logits_belong_to_their_data_files_and_format(tmp_path):
    path = tmp_path / "logits.arrow"
    logits = torch.randn(6, 3)
    _write_logits(path, logits, {"test_acc": 0.5, "train_acc": 0.6, "arch": "small_cnn", "data": "abc"})
    cached = _read_logits(path, 6, 3, "abc")
    assert cached is not None and torch.equal(cached[0], logits) and cached[1] == 0.5
    assert _read_logits(path, 6, 3, "rebuilt-data") is None  # a rebuilt data cache: train again
    assert _read_logits(path, 7, 3, "abc") is None


def test_logits_of_an_older_format_are_rebuilt(tmp_path, monkeypatch):
    import ckd_search.prepare as prepare

    path = tmp_path / "logits.arrow"
    monkeypatch.setattr(prepare, "TEACHER_FORMAT", TEACHER_FORMAT - 1)
    _write_logits(path, torch.randn(4, 2), {"test_acc": 0.5, "data": "abc"})
    monkeypatch.setattr(prepare, "TEACHER_FORMAT", TEACHER_FORMAT)
    assert _read_logits(path, 4, 2, "abc") is None
