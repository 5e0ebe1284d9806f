"""Full training-state checkpoints: written atomically with a SHA-256 sidecar, loaded weights-only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ckd_search.errors import UserError
from ckd_search.storage import atomic_write
from ckd_search.storage import atomic_write_text
from ckd_search.storage import sha256_file

STATE_FILE = "state.pt"
DIGEST_FILE = "state.sha256"


def save_checkpoint(folder: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to FOLDER/state.pt (atomic), then its digest; returns the folder."""
    folder = Path(folder)
    path = atomic_write(folder / STATE_FILE, lambda fh: torch.save(state, fh))
    atomic_write_text(folder / DIGEST_FILE, json.dumps({"sha256": sha256_file(path)}))
    return folder


def has_checkpoint(folder: str | Path | None) -> bool:
    return folder is not None and (Path(folder) / STATE_FILE).is_file()


def verify_checkpoint(folder: str | Path) -> str | None:
    """None when FOLDER holds an intact checkpoint, else what is wrong (one line, names the file).

    Checks the SHA-256 sidecar; a checkpoint without one (older runs) is only checked for size.
    """
    path = Path(folder) / STATE_FILE
    digest_path = Path(folder) / DIGEST_FILE
    if not path.is_file():
        return f"{path}: no checkpoint here"
    if path.stat().st_size == 0:
        return f"{path}: checkpoint is empty (truncated)"
    if not digest_path.is_file():
        return None
    try:
        expected = json.loads(digest_path.read_text())["sha256"]
    except (ValueError, KeyError, TypeError):
        return f"{digest_path}: unreadable checkpoint digest"
    if sha256_file(path) != expected:
        return f"{path}: checkpoint is corrupt or truncated (SHA-256 mismatch)"
    return None


def load_checkpoint(folder: str | Path) -> dict[str, Any]:
    """Load and verify a checkpoint; a damaged one is refused with a message naming the file."""
    path = Path(folder) / STATE_FILE
    problem = verify_checkpoint(folder)
    if problem is not None:
        raise UserError(problem)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # type: ignore[no-any-return]
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise UserError(f"{path}: checkpoint cannot be read ({type(err).__name__})") from None
