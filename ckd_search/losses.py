"""The CKD losses as pure functions of tensors (ckd-method.md section 2).

Shapes: per-timestep logits are ``[T, B, C]``; per-timestep features ``[T, B, D]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CKA_EPS = 1e-7  # He et al.'s CKA.linear_CKA denominator guard


def _centered_grams(x: Tensor) -> Tensor:
    """Centred Gram matrices H X X^T H for ``x`` of shape [..., B, D] -> [..., B, B]."""
    x = x - x.mean(dim=-2, keepdim=True)  # centring the features centres the Gram matrix
    return x @ x.transpose(-1, -2)


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Biased minibatch linear CKA of two feature matrices (Kornblith et al. 2019; He et al.'s form).

    CKA(X, Y) = <Kc, Lc>_F / (||Kc||_F ||Lc||_F + 1e-7) with K = X X^T, L = Y Y^T centred by
    H = I - 11^T/B. Works batched: ``x`` and ``y`` of shape [..., B, D] give a CKA per leading index,
    so all T timesteps cost one batched matmul. Computed in fp32, also inside an autocast region.

    Args:
        x: [..., B, Dx] features.
        y: [..., B, Dy] features (same B).
    Returns:
        [...] CKA values in [0, 1].
    """
    if x.shape[-2] != y.shape[-2]:
        raise ValueError(f"linear_cka needs the same batch size, got {x.shape[-2]} and {y.shape[-2]}")
    # Autocast would run the Gram matmuls in bf16 whatever the input dtype; the Frobenius products
    # of two B x B Grams then lose ~1e-2 relative. They are cheap: keep them fp32 (TF32 on a GPU).
    with torch.autocast(device_type=x.device.type, enabled=False):
        kc = _centered_grams(x.float())
        lc = _centered_grams(y.float())
        hsic = (kc * lc).sum(dim=(-1, -2))
        # vector_norm, not pow(2).sum().sqrt(): its gradient at a zero norm (features equal across
        # the batch at some step) is 0, as torch.norm's in He et al.'s CKA, not NaN.
        norm = torch.linalg.vector_norm(kc, dim=(-1, -2)) * torch.linalg.vector_norm(lc, dim=(-1, -2))
        return hsic / (norm + CKA_EPS)


def domain_alignment_loss(cka: Tensor, theta: Tensor) -> Tensor:
    """L_DA = (1/T) sum_t sigma(theta_t) (1 - |CKA(X_t, Y_t)|) from the [T] per-step CKA of the two
    streams' membrane features (:func:`linear_cka`; the step logs it too, so it is computed once)."""
    return (torch.sigmoid(theta) * (1.0 - cka.abs())).mean()


def tet_loss(
    logits_seq: Tensor,
    target: Tensor,
    lam: float,
    phi: float,
    step_weights: Tensor | None = None,
) -> Tensor:
    """Temporal efficient training loss (Deng et al., ICLR 2022) in He et al.'s form.

    L = (1 - lam)(1/T) sum_t w_t CE(O^t, y) + lam (1/T) sum_t w_t MSE(O^t, phi), with w_t = 1 unless
    ``step_weights`` ([T]) is given (the STR weights 1 - sigma(theta_t) on the DVS stream).
    """
    steps, batch, classes = logits_seq.shape
    flat = logits_seq.float().reshape(steps * batch, classes)
    ce = F.cross_entropy(flat, target.repeat(steps), reduction="none").view(steps, batch).mean(1)
    mse = (logits_seq.float() - phi).pow(2).mean(dim=(1, 2))
    per_step = (1.0 - lam) * ce + lam * mse
    if step_weights is not None:
        per_step = per_step * step_weights
    return per_step.mean()


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton KD: tau^2 KL(softmax(z_T/tau) || softmax(z_s/tau)), batchmean.

    ``student_logits`` may be [B, C] or [T, B, C]; for the latter the loss is averaged over steps
    (the per-step KD variant). The teacher is never differentiated.
    """
    teacher_logp = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    student_logp = F.log_softmax(student_logits.float() / temperature, dim=-1)
    if student_logp.dim() == 3:
        teacher_logp = teacher_logp.unsqueeze(0).expand_as(student_logp)
    kl = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)  # [..., B]
    return kl.mean() * temperature**2


def masked_kd_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float, keep: Tensor
) -> Tensor:
    """KD over the samples where ``keep`` ([B] bool) is set; 0 when none is (no host sync)."""
    teacher_logp = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    student_logp = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)
    if kl.dim() == 2:
        kl = kl.mean(0)
    weights = keep.float()
    return (kl * weights).sum() / weights.sum().clamp_min(1.0) * temperature**2
