"""Candidate speed-ups of the CKD step, tried here on copies without touching the engine.

Each is exact (same losses and gradients up to float rounding) unless its docstring says not:

* :func:`fused_stream_losses`: both streams through the backbone as one batch of 2B (one conv,
  pool and LIF call per layer instead of two), BatchNorm still per stream so its batch
  statistics and running averages match the engine's two sequential passes.
* ``joint_bn=True``: the same with one BatchNorm over both streams (NOT exact: it changes the
  batch statistics; an upper bound on what fusing can give).
* :class:`FastCpuLIF`: the engine's LIF (hard reset to 0, decayed input, detached reset,
  PiecewiseQuadratic surrogate) as one autograd function with 3 elementwise ops per step forward
  and 2-3 backward, instead of spikingjelly's CPU path (a Python loop of ~10 ops per step forward
  and ~15 backward). CPU only: on CUDA spikingjelly's Triton kernel already fuses the loop.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from spikingjelly.activation_based import layer
from spikingjelly.activation_based import neuron
from spikingjelly.activation_based import surrogate
from torch import Tensor

from ckd_search.config import Config
from ckd_search.models.snn import VGGSNN
from ckd_search.models.snn import MembraneTap
from ckd_search.models.snn import StudentOutput
from ckd_search.step import CKDModel
from ckd_search.step import StepInputs
from ckd_search.step import ckd_losses
from ckd_search.step import combine_losses
from ckd_search.step import hybrid_stream

log = logging.getLogger(__name__)


def _split_bn(bn: layer.BatchNorm2d, x: Tensor, batch: int) -> Tensor:
    """BatchNorm per stream on a [T, 2B, ...] batch: first the hybrid half, then the DVS half.

    Same order as the engine's sequential passes, so the running statistics update identically.
    """
    return torch.cat([bn(x[:, :batch]), bn(x[:, batch:])], dim=1)


def fused_forward(
    student: VGGSNN, hybrid: Tensor, dvs: Tensor, joint_bn: bool = False
) -> tuple[StudentOutput, StudentOutput]:
    """Both streams ([T, B, 2, S, S] each) through the backbone at once; heads per stream."""
    batch = hybrid.shape[1]
    x = torch.cat([hybrid, dvs.to(hybrid.dtype)], dim=1)
    membrane: Tensor | None = None
    for block in student.features:
        if isinstance(block, MembraneTap):
            x, membrane = block(x)
        elif isinstance(block, layer.BatchNorm2d) and not joint_bn:
            x = _split_bn(block, x, batch)
        else:
            x = block(x)
    assert membrane is not None
    feats = x.flatten(2)
    membrane = membrane.flatten(2)
    static = StudentOutput(student.static_head(feats[:, :batch]), membrane[:, :batch], None)
    dvs_out = StudentOutput(student.dvs_head(feats[:, batch:]), membrane[:, batch:], None)
    return static, dvs_out


def fused_stream_losses(
    model: CKDModel, inputs: StepInputs, cfg: Config, joint_bn: bool = False
) -> dict[str, Tensor]:
    """:func:`ckd_search.step.ckd_losses` with the two streams fused into one backbone pass."""
    student = model.student
    if cfg.loss.method == "dvs_only":
        return ckd_losses(model, inputs, cfg)
    hybrid = hybrid_stream(inputs.dvs, inputs.static, inputs.replace_mask)
    student.reset_state()
    static_out, dvs_out = fused_forward(student, hybrid, inputs.dvs, joint_bn=joint_bn)
    student.reset_state()
    return combine_losses(model, inputs, cfg, static_out, dvs_out)


def joint_bn_losses(model: CKDModel, inputs: StepInputs, cfg: Config) -> dict[str, Tensor]:
    """Fused streams with ONE BatchNorm over both (changes the statistics: not exact)."""
    return fused_stream_losses(model, inputs, cfg, joint_bn=True)


class _LIFSequence(torch.autograd.Function):
    """LIF over [T, ...] from v = 0: H = V (1 - 1/tau) + X / tau, S = H >= theta, V = H (1 - S).

    Returns (spikes in the input dtype, post-reset membrane sequence or None). Backward with the
    reset detached (He et al.) and the PiecewiseQuadratic surrogate
    g'(u) = max(0, alpha - alpha^2 |u|), u = H - theta; the membrane sequence is differentiable.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        tau: float,
        threshold: float,
        alpha: float,
        need_v_seq: bool,
    ) -> tuple[Tensor, Tensor | None]:
        work = torch.promote_types(x.dtype, torch.float32)
        decay = 1.0 - 1.0 / tau
        xs = x.to(work) / tau
        h_seq = torch.empty_like(xs)
        fired = torch.empty_like(xs, dtype=torch.bool)
        v_seq = torch.empty_like(xs) if need_v_seq else None
        zero = xs.new_zeros(())
        state = torch.zeros_like(xs[0])  # V[t-1]; overwritten in place once H[t] is computed
        for t in range(xs.shape[0]):
            h = torch.add(xs[t], state, alpha=decay, out=h_seq[t])
            torch.ge(h, threshold, out=fired[t])
            if v_seq is None:
                torch.where(fired[t], zero, h, out=state)
            else:
                state = torch.where(fired[t], zero, h, out=v_seq[t])
        ctx.save_for_backward(h_seq, fired)
        ctx.tau, ctx.threshold, ctx.alpha, ctx.in_dtype = tau, threshold, alpha, x.dtype
        spikes = fired.to(x.dtype)
        return spikes, v_seq

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, g_spikes: Tensor | None, g_v: Tensor | None
    ) -> tuple[Tensor | None, None, None, None, None]:
        h_seq, fired = ctx.saved_tensors
        tau, threshold, alpha = ctx.tau, ctx.threshold, ctx.alpha
        decay = 1.0 - 1.0 / tau
        keep = (~fired).to(h_seq.dtype)
        if g_spikes is not None:
            # every step's surrogate term at once: only the reset path is sequential
            sg = (h_seq - threshold).abs_().mul_(-alpha * alpha).add_(alpha).clamp_min_(0.0)
            direct = sg.mul_(g_spikes.to(h_seq.dtype))
        else:
            direct = torch.zeros_like(h_seq)
        gh = torch.empty_like(h_seq)
        carry: Tensor | None = None
        for t in range(h_seq.shape[0] - 1, -1, -1):
            back = g_v[t] if g_v is not None else None
            if carry is not None:
                back = carry if back is None else back + carry
            if back is None:
                gh[t].copy_(direct[t])
            else:
                torch.addcmul(direct[t], back, keep[t], out=gh[t])
            carry = gh[t] * decay
        return gh.div_(tau).to(ctx.in_dtype), None, None, None, None


class FastCpuLIF(neuron.LIFNode):
    """``LIFNode`` whose multi-step forward is :class:`_LIFSequence` (the engine's LIF only).

    Runs from the reset state (v = 0), as every engine forward does; the final membrane is not
    kept as state. ``store_v_seq=True`` fills ``v_seq`` (differentiable), as spikingjelly does.
    """

    @classmethod
    def like(cls, lif: neuron.LIFNode) -> FastCpuLIF:
        sg = lif.surrogate_function
        if not (
            isinstance(sg, surrogate.PiecewiseQuadratic)
            and lif.v_reset == 0.0
            and lif.decay_input
            and lif.detach_reset
        ):
            raise ValueError(
                "FastCpuLIF covers hard reset to 0, decay_input, detach_reset, PiecewiseQuadratic"
            )
        return cls(
            tau=lif.tau,
            decay_input=True,
            v_threshold=lif.v_threshold,
            v_reset=0.0,
            detach_reset=True,
            surrogate_function=surrogate.PiecewiseQuadratic(alpha=sg.alpha),
            step_mode="m",
            store_v_seq=lif.store_v_seq,
        )

    def multi_step_forward(self, x_seq: Tensor, *args: Tensor, **kwargs: object) -> Tensor:
        if not (isinstance(self.v, float) and self.v == 0.0):
            return super().multi_step_forward(x_seq, *args, **kwargs)  # mid-sequence state: the slow path
        spikes, v_seq = _LIFSequence.apply(
            x_seq,
            float(self.tau),
            float(self.v_threshold),
            float(self.surrogate_function.alpha),
            self.store_v_seq,
        )
        self.v_seq = v_seq
        return spikes


def use_fast_cpu_lif(student: VGGSNN) -> None:
    """Swap every LIF of the student (the membrane tap's too) for :class:`FastCpuLIF` in place."""
    for i, block in enumerate(student.features):
        if isinstance(block, MembraneTap):
            block.lif = FastCpuLIF.like(block.lif)
        elif isinstance(block, neuron.LIFNode):
            student.features[i] = FastCpuLIF.like(block)
