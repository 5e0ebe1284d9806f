"""One CKD training step on the device: hybrid stream, DVS stream, four losses, no host sync.

L = L_cls-s (TET, hybrid) + alpha gamma L_KD + L_cls-e (TET, DVS, weighted 1 - sigma(theta_t))
    + beta L_DA (CKA, weighted sigma(theta_t))                          (ckd-method.md 2.7)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch import nn

from ckd_search import losses
from ckd_search.config import Config
from ckd_search.models.snn import VGGSNN
from ckd_search.models.snn import StudentOutput


class CKDModel(nn.Module):
    """The student plus the learnable spatio-temporal weights theta_t (one scalar per step)."""

    def __init__(self, student: VGGSNN, timesteps: int, theta_init: float, learnable: bool) -> None:
        super().__init__()
        self.student = student
        self.theta = nn.Parameter(torch.full((timesteps,), float(theta_init)), requires_grad=learnable)


@dataclass
class StepInputs:
    dvs: Tensor  # [T, B, 2, S, S] augmented DVS frames
    static: Tensor  # [B, 1, S, S] V channel of each sample's paired RGB image
    labels: Tensor  # [B]
    teacher_logits: Tensor | None  # [B, C] for the paired images
    replace_mask: Tensor  # [B] bool: hybrid sample replaced by its DVS sample
    gamma: Tensor  # 0-dim KD switch weight


def hybrid_stream(dvs: Tensor, static: Tensor, replace_mask: Tensor) -> Tensor:
    """Static V frames on both polarities and all steps, each sample replaced by its DVS sample
    where ``replace_mask`` is set. [T, B, 2, S, S]."""
    static_seq = static.unsqueeze(0).expand(dvs.shape[0], -1, dvs.shape[2], -1, -1)
    return torch.where(replace_mask.view(1, -1, 1, 1, 1), dvs, static_seq.to(dvs.dtype))


def ckd_losses(model: CKDModel, inputs: StepInputs, cfg: Config) -> dict[str, Tensor]:
    """Forward both streams and return every loss part plus the total under "loss".

    Streams run one after the other with the neuron state reset in between (He et al.), hybrid
    first. With ``loss.method == "dvs_only"`` only the DVS stream runs (TET baseline).
    """
    student, lc = model.student, cfg.loss
    out: dict[str, Tensor] = {}
    if lc.method == "dvs_only":
        student.reset_state()
        dvs_out = student(inputs.dvs, head="dvs")
        student.reset_state()
        out["loss_cls_e"] = losses.tet_loss(dvs_out.logits, inputs.labels, lc.tet_lambda, lc.tet_phi)
        out["loss"] = out["loss_cls_e"]
        out["dvs_logits"] = dvs_out.logits.detach()
        return out

    hybrid = hybrid_stream(inputs.dvs, inputs.static, inputs.replace_mask)
    student.reset_state()
    static_out = student(hybrid, head="static")
    student.reset_state()
    dvs_out = student(inputs.dvs, head="dvs")
    student.reset_state()
    return combine_losses(model, inputs, cfg, static_out, dvs_out)


def combine_losses(
    model: CKDModel, inputs: StepInputs, cfg: Config, static_out: StudentOutput, dvs_out: StudentOutput
) -> dict[str, Tensor]:
    """The four loss parts and their total from the two streams' outputs (ckd-method.md 2.7)."""
    lc, kc = cfg.loss, cfg.kd
    sig = torch.sigmoid(model.theta)
    cls_s = losses.tet_loss(static_out.logits, inputs.labels, lc.tet_lambda, lc.tet_phi)
    cls_e = losses.tet_loss(dvs_out.logits, inputs.labels, lc.tet_lambda, lc.tet_phi, step_weights=1.0 - sig)
    cka = losses.linear_cka(static_out.membrane, dvs_out.membrane)  # [T]
    da = losses.domain_alignment_loss(cka, model.theta)
    total = cls_s + cls_e + lc.beta * da
    out: dict[str, Tensor] = {}
    if kc.enabled and inputs.teacher_logits is not None:
        student_kd = static_out.logits if kc.target == "per_step" else static_out.logits.mean(0)
        if kc.mask_replaced:
            kd = losses.masked_kd_loss(
                student_kd, inputs.teacher_logits, kc.temperature, ~inputs.replace_mask
            )
        else:
            kd = losses.kd_loss(student_kd, inputs.teacher_logits, kc.temperature)
        total = total + kc.alpha * inputs.gamma * kd
        out["loss_kd"] = kd
    out.update(loss=total, loss_cls_s=cls_s, loss_cls_e=cls_e, loss_da=da, cka=cka.detach())
    out["dvs_logits"] = dvs_out.logits.detach()
    return out
