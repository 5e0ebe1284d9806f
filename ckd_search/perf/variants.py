"""Candidate speed-ups of the CKD step, tried here on copies without touching the engine.

Each is exact (same losses and gradients up to float rounding) unless its docstring says not:

* :func:`fused_stream_losses`: both streams through the backbone as one batch of 2B (one conv,
  pool and LIF call per layer instead of two), BatchNorm still per stream so its batch
  statistics and running averages match the engine's two sequential passes.
* ``joint_bn=True``: the same with one BatchNorm over both streams (NOT exact: it changes the
  batch statistics; an upper bound on what fusing can give).
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based import layer
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
