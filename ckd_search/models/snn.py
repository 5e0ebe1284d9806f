"""The spiking student: VGGSNN in spikingjelly 2.0 multi-step layers (ckd-method.md 3.1).

64-128-P-256-256-P-512-512-P-512-512-P-FC (channels times ``width``), Conv3x3 + BN + LIF per conv,
AvgPool2 after the marked convs, one shared backbone, a static/hybrid head and a DVS head.
The membrane potential of the last conv LIF *after* spike and reset is tapped for the CKA loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import base
from spikingjelly.activation_based import layer
from spikingjelly.activation_based import neuron
from spikingjelly.activation_based import surrogate
from torch import Tensor
from torch import nn

from ckd_search.config import ModelConfig

PLAN: tuple[int | str, ...] = (64, 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P")


def make_lif(cfg: ModelConfig, kind: type[neuron.LIFNode] = neuron.LIFNode) -> neuron.LIFNode:
    """BrainCog/He et al. LIF: H = U + (X - U)/tau, spike at H >= V_th, hard reset to 0.

    PiecewiseQuadratic(alpha) is the QGateGrad triangle and one of spikingjelly's fused surrogates.
    ``kind``: spikingjelly's ``LIFNode`` or a subclass with the same constructor (``models.cpu_lif``).
    """
    return kind(
        tau=float(cfg.tau),
        decay_input=True,
        v_threshold=float(cfg.v_threshold),
        v_reset=0.0,
        detach_reset=cfg.detach_reset,
        surrogate_function=surrogate.PiecewiseQuadratic(alpha=float(cfg.surrogate_alpha)),
        step_mode="m",
    )


class StepwiseBatchNorm2d(layer.BatchNorm2d):
    """He et al.'s BatchNorm (ckd-method.md 3.1): one layer shared by all time steps, applied step
    by step, so each step is normalised with the statistics of its own B samples and the running
    statistics move once per step. spikingjelly's multi-step BatchNorm pools all T*B samples
    instead (``model.bn_statistics="joint"``). Eval mode is the same in both: running statistics.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.step_mode == "s":
            return self.super_forward(x)
        if not self.training:  # running statistics: per step and joint agree, joint is one kernel
            return super().forward(x)
        if torch.compiler.is_compiling() and self.momentum is not None:
            return self._all_steps_at_once(x)
        return torch.stack([self.super_forward(x_t) for x_t in x.unbind(0)])

    def _all_steps_at_once(self, x: Tensor) -> Tensor:
        """The step loop's result from one reduction over [T, B, C, H, W] (compiled steps only).

        Inductor turns the loop into T reductions and T normalisations per layer, forward and
        backward (36 kernels for T = 6 against 10 here, CPU Inductor), which left a compiled
        per-step BatchNorm 9 % slower than the joint one on an H200. Eagerly this composite is
        slower than the T ``F.batch_norm`` calls (3-4x on a CPU), so it runs under
        ``torch.compile`` only. Same statistics, output and running statistics as the loop up to
        float rounding (1.10x on the compiled CPU step, bench/cpu-results.md); computed in at
        least fp32 and returned in the input's dtype, as ``F.batch_norm`` does under autocast.
        (With ``momentum=None``, a cumulative average, the loop runs compiled too: its step count
        is read on the host.)
        """
        steps, channels = x.shape[0], x.shape[2]
        n = x.numel() // (steps * channels)  # samples behind each statistic: B * H * W
        if n == 1:  # F.batch_norm's own check, which the loop would hit
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {list(x.shape)}"
            )
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        var, mean = torch.var_mean(xf, dim=(1, 3, 4), correction=0, keepdim=True)  # [T, 1, C, 1, 1]
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight.view(1, 1, -1, 1, 1)
        y = (xf - mean) * scale
        if self.affine:
            y = y + self.bias.view(1, 1, -1, 1, 1)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                stats = self.running_mean.dtype
                step_means = mean.view(steps, channels).to(stats)
                step_vars = (var.view(steps, channels) * (n / (n - 1))).to(stats)  # unbiased
                for t in range(steps):  # r <- (1 - m) r + m s_t, in the loop's order
                    self.running_mean.lerp_(step_means[t], self.momentum)
                    self.running_var.lerp_(step_vars[t], self.momentum)
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(steps)
        return y.to(x.dtype)


def make_bn(cfg: ModelConfig, channels: int) -> layer.BatchNorm2d:
    if cfg.bn_statistics == "per_step":
        return StepwiseBatchNorm2d(channels, step_mode="m")
    return layer.BatchNorm2d(channels, step_mode="m")


class MembraneTap(nn.Module):
    """A LIF layer that also returns its post-reset membrane potential sequence [T, ...].

    spikingjelly 2.0's ``store_v_seq=True`` runs through the same fused multi-step op and keeps the
    voltage trace differentiable, so the tap costs no extra kernels per step.
    """

    def __init__(self, lif: neuron.LIFNode) -> None:
        super().__init__()
        lif.store_v_seq = True
        self.lif = lif

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        spikes = self.lif(x)
        return spikes, self.lif.v_seq


@dataclass
class StudentOutput:
    logits: Tensor  # [T, B, C]
    membrane: Tensor  # [T, B, D] post-reset membrane of the last conv LIF (pooled: model.cka_tap)
    firing: Tensor | None  # [L] mean firing rate per LIF layer (only when recording)


class VGGSNN(nn.Module):
    """Two-stream VGGSNN: ``forward(x, head)`` with x [T, B, 2, S, S] and head 'static' or 'dvs'."""

    def __init__(self, cfg: ModelConfig, num_classes: int, in_size: int, in_channels: int = 2) -> None:
        super().__init__()
        self.cfg = cfg
        blocks: list[nn.Module] = []
        self.conv_shapes: list[tuple[int, int, int]] = []  # (in_ch, out_ch, out_hw) per conv, for SOPs
        channels, size = in_channels, in_size
        convs = [c for c in PLAN if c != "P"]
        for i, item in enumerate(PLAN):
            if item == "P":
                blocks.append(layer.AvgPool2d(2, 2, step_mode="m"))
                size //= 2
                continue
            out = max(1, round(int(item) * cfg.width))
            blocks.append(layer.Conv2d(channels, out, 3, padding=1, bias=cfg.conv_bias, step_mode="m"))
            blocks.append(make_bn(cfg, out))
            is_last_conv = sum(1 for c in PLAN[: i + 1] if c != "P") == len(convs)
            blocks.append(MembraneTap(make_lif(cfg)) if is_last_conv else make_lif(cfg))
            self.conv_shapes.append((channels, out, size))
            channels = out
        if size < 1:
            raise ValueError(f"input size {in_size} is too small for four 2x2 poolings")
        self.features = nn.ModuleList(blocks)
        self.feature_dim = channels * size * size
        self.static_head = layer.Linear(self.feature_dim, num_classes, step_mode="m")
        self.dvs_head = (
            self.static_head
            if cfg.shared_head
            else layer.Linear(self.feature_dim, num_classes, step_mode="m")
        )
        self.record_firing = False
        # None: each LIF runs in its input's dtype. float32 for bf16 on a CPU: spikingjelly's
        # neuron_storage="fp32" (the CUDA bf16 path) needs its Triton plan, so the LIF input is cast
        # up here instead and the membrane state stays fp32 as on a GPU; spikes go back down.
        self.neuron_dtype: torch.dtype | None = None

    def forward(self, x: Tensor, head: str = "dvs") -> StudentOutput:
        membrane: Tensor | None = None
        rates: list[Tensor] = []
        for block in self.features:
            if not isinstance(block, neuron.LIFNode | MembraneTap):
                x = block(x)
                continue
            x, v_seq = self._fire(block, x)
            membrane = v_seq if v_seq is not None else membrane
            if self.record_firing:
                rates.append(x.detach().float().mean())
        assert membrane is not None
        if self.cfg.cka_tap == "post_pool":  # [T, B, C, H, W]: pooled as the last AvgPool pools spikes
            membrane = F.avg_pool2d(membrane.flatten(0, 1), 2).unflatten(0, membrane.shape[:2])
        logits = (self.static_head if head == "static" else self.dvs_head)(x.flatten(2))
        firing = torch.stack(rates) if rates else None
        return StudentOutput(logits=logits, membrane=membrane.flatten(2), firing=firing)

    def _fire(self, block: neuron.LIFNode | MembraneTap, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Spikes of one LIF layer in ``x``'s dtype, and the membrane sequence where it is tapped."""
        dtype = x.dtype
        if self.neuron_dtype is not None:
            x = x.to(self.neuron_dtype)
        spikes, v_seq = block(x) if isinstance(block, MembraneTap) else (block(x), None)
        return spikes.to(dtype), v_seq

    def reset_state(self) -> None:
        """Set every neuron's state back to its reset value (v = 0) before the next sequence.

        For the student's neurons (LIF layers: their ``reset`` sets the memories and drops
        ``v_seq``) spikingjelly's ``functional.reset_net`` does the same, but passes a Python-number
        reset value through ``copy.deepcopy``, which Dynamo in torch 2.11 cannot trace: inside the
        compiled step that was a graph break, and the neuron reset's frames ran eagerly (H100,
        2026-11-28; torch 2.14 traces it). A number needs no copy, so it is assigned; a tensor
        reset value goes through spikingjelly's own ``reset``. (The name is not ``reset``, so
        ``reset_net`` on a model holding this one does not call it.)
        """
        for module in self.modules():
            if not isinstance(module, base.MemoryModule):
                continue
            values = module._memories_rv
            if all(isinstance(value, int | float) for value in values.values()):
                for key, value in values.items():
                    module._memories[key] = value
                if isinstance(module, neuron.BaseNode):
                    module.v_seq = None  # as BaseNode.reset: no trace kept alive between steps
            else:
                module.reset()

    def macs_per_step(self) -> list[float]:
        """Multiply-accumulates per sample and timestep of each conv, then the FC layer."""
        macs = [float(cin * cout * 9 * hw * hw) for cin, cout, hw in self.conv_shapes]
        macs.append(float(self.feature_dim * self.static_head.out_features))
        return macs


# Energy per operation at 45 nm (Horowitz 2014), the SNN literature's usual model.
E_MAC_PJ = 4.6
E_AC_PJ = 0.9


def synaptic_ops(model: VGGSNN, firing: Tensor, timesteps: int) -> tuple[float, float]:
    """(SOPs per sample, energy per sample in microjoules) from per-layer firing rates.

    The first conv takes real-valued frames (MACs at 4.6 pJ); every later layer is driven by spikes
    (accumulates at 0.9 pJ), SOP_l = rate of its input spikes x MACs_l, summed over T.
    ``firing`` holds one rate per LIF layer (8 convs), i.e. the input rate of layers 2..9.
    """
    macs = model.macs_per_step()
    rates = firing.tolist()
    sops = sum(rate * mac for rate, mac in zip(rates, macs[1:])) * timesteps
    first_macs = macs[0] * timesteps
    energy_pj = first_macs * E_MAC_PJ + sops * E_AC_PJ
    return sops, energy_pj * 1e-6
