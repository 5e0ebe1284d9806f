"""Checkpoint integrity: the SHA-256 sidecar decides; older checkpoints without one are accepted."""

from __future__ import annotations

import torch

from ckd_search.checkpoint import DIGEST_FILE
from ckd_search.checkpoint import STATE_FILE
from ckd_search.checkpoint import save_checkpoint
from ckd_search.checkpoint import verify_checkpoint


def test_an_intact_checkpoint_passes_and_a_changed_byte_does_not(tmp_path):
    save_checkpoint(tmp_path, {"epoch": torch.tensor(3)})
    assert verify_checkpoint(tmp_path) is None
    state = tmp_path / STATE_FILE
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    assert "SHA-256 mismatch" in (verify_checkpoint(tmp_path) or "")


def test_a_checkpoint_of_an_older_run_without_a_digest_is_accepted(tmp_path):
    save_checkpoint(tmp_path, {"epoch": torch.tensor(3)})
    (tmp_path / DIGEST_FILE).unlink()
    assert verify_checkpoint(tmp_path) is None


def test_an_unreadable_digest_is_refused_naming_it(tmp_path):
    save_checkpoint(tmp_path, {"epoch": torch.tensor(3)})
    (tmp_path / DIGEST_FILE).write_text("{not json")
    assert verify_checkpoint(tmp_path) == f"{tmp_path / DIGEST_FILE}: unreadable checkpoint digest"


def test_a_missing_or_empty_state_is_named(tmp_path):
    assert verify_checkpoint(tmp_path) == f"{tmp_path / STATE_FILE}: no checkpoint here"
    (tmp_path / STATE_FILE).write_bytes(b"")
    assert "checkpoint is empty (truncated)" in (verify_checkpoint(tmp_path) or "")
