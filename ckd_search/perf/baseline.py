"""The plain spikingjelly two-stream training step that performance.md section 6 timed on an H200.

VGGSNN (bias-free conv + BN + ``LIFNode(tau=2., detach_reset=True, ATan)``, ``step_mode='m'``,
AvgPool, Linear), both streams concatenated into one batch of 2B through one backbone and head,
TET-style per-timestep cross-entropy averaged over T, AdamW. No CKA, no KD, no separate heads:
the floor a CKD step can be compared with.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from spikingjelly.activation_based import layer
from spikingjelly.activation_based import neuron
from spikingjelly.activation_based import surrogate
from torch import Tensor
from torch import nn

from ckd_search.engine import compile_fresh
from ckd_search.engine import prime_for_compile
from ckd_search.models.snn import PLAN

log = logging.getLogger(__name__)

BASELINE_LR = 5.86e-4  # the paper's 5e-3 * 120 / 1024, as in section 6


def plain_vggsnn(width: float, num_classes: int, size: int, in_channels: int = 2) -> nn.Sequential:
    """The section 6 VGGSNN: the project's channel plan, one head, ATan surrogate."""
    blocks: list[nn.Module] = []
    channels = in_channels
    for item in PLAN:
        if item == "P":
            blocks.append(layer.AvgPool2d(2, 2, step_mode="m"))
            size //= 2
            continue
        out = max(1, round(int(item) * width))
        blocks += [
            layer.Conv2d(channels, out, 3, padding=1, bias=False, step_mode="m"),
            layer.BatchNorm2d(out, step_mode="m"),
            neuron.LIFNode(tau=2.0, detach_reset=True, surrogate_function=surrogate.ATan(), step_mode="m"),
        ]
        channels = out
    blocks += [layer.Flatten(step_mode="m"), layer.Linear(channels * size * size, num_classes, step_mode="m")]
    return nn.Sequential(*blocks)


class BaselineStep:
    """One optimizer step of the plain two-stream baseline, fp32 or bf16 (+ torch.compile, channels_last).

    bf16 follows spikingjelly's recipe: ``prepare_model_for_precision`` with fp32 neuron state
    (plain autocast would drop LIF onto the Torch reference path), before the optimizer is built.
    """

    def __init__(
        self,
        width: float,
        num_classes: int,
        size: int,
        device: torch.device,
        *,
        precision: str = "fp32",
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        self.device = device
        self.model = plain_vggsnn(width, num_classes, size).to(device)
        if channels_last:  # as the engine: NHWC weights, cuDNN picks NHWC kernels
            self.model = self.model.to(memory_format=torch.channels_last)
        self.autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
        if precision == "bf16":
            from spikingjelly.activation_based.precision import PrecisionConfig
            from spikingjelly.activation_based.precision import prepare_model_for_precision

            art = prepare_model_for_precision(
                self.model, device, PrecisionConfig(mode="bf16", neuron_storage="fp32")
            )
            self.autocast = art.autocast_context
        self.forward: Callable[[Tensor], Tensor] = self.model
        if compile:
            frames = torch.zeros(2, 2, 2, size, size, device=device)

            def forward() -> None:
                with self.autocast():
                    self.model(frames)
                functional.reset_net(self.model)

            prime_for_compile(self.model, forward)  # spikingjelly's first-use plans: no graph break
            self.forward = compile_fresh(self.model, "default")
            functional.invalidate_reset_cache(self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=BASELINE_LR)

    def __call__(self, hybrid: Tensor, dvs: Tensor, labels: Tensor) -> Tensor:
        """Both streams ([T, B, 2, S, S] each) as one batch of 2B; returns the loss (no sync)."""
        x = torch.cat([hybrid, dvs], dim=1)
        y = torch.cat([labels, labels])
        with self.autocast():
            logits = self.forward(x)  # [T, 2B, C]
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.repeat(logits.shape[0]))
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        functional.reset_net(self.model)
        return loss.detach()
