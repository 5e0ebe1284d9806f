"""Which torch device a run (or its teacher) uses, refused in one line when it cannot be had."""

from __future__ import annotations

import torch

from ckd_search.errors import UserError


def resolve_device(name: str, key: str = "run.device") -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; a UserError naming ``key``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{key}={name!r} is not a device (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key}={name!r} but no CUDA device is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"{key}={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
