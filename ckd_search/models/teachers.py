"""ANN teachers: a registry of torchvision networks and a small CNN for the embedded data.

Teachers are built without weights; ``teacher.weights`` may name a local file to start from (never a
download). The classifier is replaced to match the student's classes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ckd_search.errors import UserError

log = logging.getLogger(__name__)


def small_cnn(num_classes: int) -> nn.Module:
    """Three conv blocks and a linear head, trained in seconds on a CPU (Digits, one run on the
    project's 2-core VM: 0.72 test accuracy after 3 epochs, 0.98 after 8)."""

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    return nn.Sequential(
        block(3, 32),
        nn.MaxPool2d(2),
        block(32, 64),
        nn.MaxPool2d(2),
        block(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, num_classes),
    )


def _torchvision(name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        net.fc = nn.Linear(net.fc.in_features, num_classes)
        return net

    return build


TEACHERS: dict[str, Callable[[int], nn.Module]] = {
    "small_cnn": small_cnn,
    "resnet18": _torchvision("resnet18"),
    "wide_resnet101_2": _torchvision("wide_resnet101_2"),
}


def create_teacher(arch: str, num_classes: int, weights: str | None = None) -> nn.Module:
    """Build a teacher; with ``weights`` load a local state dict (the old classifier is dropped)."""
    if arch not in TEACHERS:
        raise UserError(f"teacher.arch={arch!r} is unknown; available: {sorted(TEACHERS)}")
    net = TEACHERS[arch](num_classes)
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"teacher.weights={str(path)!r}: no such file (weights are never downloaded)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input
            raise UserError(f"teacher.weights={str(path)!r}: not a readable state dict ({err})") from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        own = net.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not usable:
            raise UserError(f"teacher.weights={str(path)!r}: no tensor matches a {arch} network")
        net.load_state_dict(usable, strict=False)
        log.info("teacher: loaded %d/%d tensors from %s", len(usable), len(own), path)
    return net
