"""The student's LIF layer as one autograd function, for CPU runs (``run.cpu_lif="fused"``).

spikingjelly 2.0's CPU path for a multi-step LIF is a Python loop of about 10 tensor ops per time
step forward and 15 backward, each its own autograd node, plus a ``torch.stack`` of the outputs.
:class:`FusedCpuLIF` computes the same neuron (hard reset to 0, decayed input, detached reset,
PiecewiseQuadratic surrogate; ckd-method.md 2.1) with 3 ops per step forward and 2-3 backward,
writing straight into preallocated [T, ...] outputs. Exact: same spikes, membranes and gradients
up to float rounding (tests/models/test_cpu_lif.py). On CUDA, spikingjelly's Triton kernel already
fuses the loop, so the engine swaps the layers in only on a CPU, and only where the reset is
detached (``model.detach_reset``, He et al.'s choice and the default).
"""

from __future__ import annotations

from typing import Any

import torch
from spikingjelly.activation_based import neuron
from spikingjelly.activation_based import surrogate
from torch import Tensor

from ckd_search.models.snn import VGGSNN
from ckd_search.models.snn import MembraneTap
from ckd_search.models.snn import make_lif


class _LIFSequence(torch.autograd.Function):
    """LIF over [T, ...] from v = 0: H = V (1 - 1/tau) + X / tau, S = H >= theta, V = H (1 - S).

    Returns (spikes, post-reset membrane sequence or None, last membrane V_T-1
    for the layer's state). Backward with the reset detached (He et al.) and the PiecewiseQuadratic
    surrogate g'(u) = max(0, alpha - alpha^2 |u|), u = H - theta; both membrane outputs are
    differentiable. Every op writes floats: on a CPU a comparison into a bool tensor,
    ``torch.where`` and the bool to float cast each cost 5-15x a float op of the same size
    (channels_last, torch 2.14).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        tau: float,
        threshold: float,
        alpha: float,
        need_v_seq: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        decay = 1.0 - 1.0 / tau
        h_seq = x / tau  # X/tau, then H in place (x is fp32 or fp64: FusedCpuLIF's gate)
        spikes = torch.empty_like(h_seq)
        v_out = torch.empty_like(h_seq if need_v_seq else h_seq[:1])  # V: every step, or the last one
        for t in range(h_seq.shape[0]):
            h = h_seq[t]
            if t:
                h.add_(v_out[t - 1 if need_v_seq else 0], alpha=decay)
            torch.ge(h, threshold, out=spikes[t])
            # V = H - H S: exactly H where silent and +0 where fired
            torch.addcmul(h, h, spikes[t], value=-1.0, out=v_out[t if need_v_seq else 0])
        ctx.save_for_backward(h_seq)  # not the spikes: the caller may change its output in place
        ctx.tau, ctx.threshold, ctx.alpha = tau, threshold, alpha
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no zeros to add
        v_last = v_out[-1].clone() if need_v_seq else v_out[0]  # an output may not view another
        return spikes, (v_out if need_v_seq else None), v_last

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, g_spikes: Tensor | None, g_v: Tensor | None, g_last: Tensor | None
    ) -> tuple[Tensor | None, None, None, None, None]:
        (h_seq,) = ctx.saved_tensors
        tau, threshold, alpha = ctx.tau, ctx.threshold, ctx.alpha
        decay = 1.0 - 1.0 / tau
        keep = torch.lt(h_seq, threshold, out=torch.empty_like(h_seq))  # 1 - S: dV/dH, reset detached
        if g_spikes is not None:
            # every step's surrogate term at once: only the reset path is sequential
            sg = (h_seq - threshold).abs_().mul_(-alpha * alpha).add_(alpha).clamp_min_(0.0)
            direct = sg.mul_(g_spikes)
        else:
            direct = torch.zeros_like(h_seq)
        gh = torch.empty_like(h_seq)
        carry = g_last  # dL/dV of the last step through the state, then of each earlier one
        for t in range(h_seq.shape[0] - 1, -1, -1):
            back = g_v[t] if g_v is not None else None
            if carry is not None:
                back = carry if back is None else back + carry
            if back is None:
                gh[t].copy_(direct[t])
            else:
                torch.addcmul(direct[t], back, keep[t], out=gh[t])
            carry = gh[t] * decay
        return gh.div_(tau), None, None, None, None


class FusedCpuLIF(neuron.LIFNode):
    """``LIFNode`` whose multi-step forward is :class:`_LIFSequence` (the engine's LIF only).

    Runs from the reset state (v = 0), as every engine forward does, on fp32 or fp64 input, and
    leaves the last membrane as the state ``v``, as spikingjelly does. ``store_v_seq=True`` fills
    ``v_seq`` (differentiable), as spikingjelly does. A layer with state left over from an earlier
    call, bf16 input (spikingjelly computes it in bf16), or a step traced by ``torch.compile``
    takes spikingjelly's own path.
    """

    v: Tensor | float  # the membrane state, a spikingjelly memory (0.0 after a reset)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (
            isinstance(self.surrogate_function, surrogate.PiecewiseQuadratic)
            and self.v_reset == 0.0
            and self.decay_input
            and self.detach_reset
            and self.step_mode == "m"
        ):
            raise ValueError(
                "FusedCpuLIF covers multi-step, hard reset to 0, decay_input, detach_reset, "
                "PiecewiseQuadratic"
            )

    def multi_step_forward(self, x_seq: Tensor, *args: Tensor, **kwargs: object) -> Tensor:
        # Mid-sequence state takes spikingjelly's loop, and so does a compiled step: Inductor fuses
        # that loop itself, while Dynamo in torch 2.11 cannot trace the ``out=`` writes into
        # channels_last slices below (20 graph breaks a step; torch 2.14 traces them).
        if (
            torch.compiler.is_compiling()
            or x_seq.dtype not in (torch.float32, torch.float64)
            or not (isinstance(self.v, float) and self.v == 0.0)
        ):
            return super().multi_step_forward(x_seq, *args, **kwargs)
        spikes, v_seq, v_last = _LIFSequence.apply(
            x_seq,
            float(self.tau),
            float(self.v_threshold),
            float(self.surrogate_function.alpha),
            self.store_v_seq,
        )
        self.v, self.v_seq = v_last, v_seq
        return spikes


def use_fused_cpu_lif(student: VGGSNN, fused: bool = True) -> None:
    """Make every LIF of the student (the membrane tap's too) a :class:`FusedCpuLIF` in place, or
    with ``fused=False`` spikingjelly's own ``LIFNode`` again.

    The fused kernel computes the detached reset only: with ``model.detach_reset=false`` (an
    ablation) the student keeps spikingjelly's LIF. LIF layers and the tap hold no parameters, so
    the student's ``state_dict`` is the same either way.
    """
    kind = FusedCpuLIF if fused and student.cfg.detach_reset else neuron.LIFNode
    for i, block in enumerate(student.features):
        if isinstance(block, MembraneTap):
            student.features[i] = MembraneTap(make_lif(student.cfg, kind))
        elif isinstance(block, neuron.LIFNode):
            student.features[i] = make_lif(student.cfg, kind)
