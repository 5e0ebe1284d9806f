"""The CKD objective put together (ckd-method.md 2.7), from hand-made stream outputs:
L = L_cls_s + L_cls_e(weights 1 - sigma(theta_t)) + beta * mean_t sigma(theta_t)(1 - |CKA_t|)
    + alpha * gamma * L_KD."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ckd_search import losses
from ckd_search.config import Config
from ckd_search.models.snn import StudentOutput
from ckd_search.step import StepInputs
from ckd_search.step import combine_losses

T, B, C, D = 3, 6, 4, 5


@pytest.fixture
def parts() -> tuple[SimpleNamespace, StudentOutput, StudentOutput, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    model = SimpleNamespace(theta=torch.randn(T, generator=gen))  # sigma(theta) far from 1/2
    static = StudentOutput(torch.randn(T, B, C, generator=gen), torch.randn(T, B, D, generator=gen), None)
    dvs = StudentOutput(torch.randn(T, B, C, generator=gen), torch.randn(T, B, D, generator=gen), None)
    labels = torch.randint(0, C, (B,), generator=gen)
    teacher = torch.randn(B, C, generator=gen) * 3
    return model, static, dvs, labels, teacher


def _inputs(labels, teacher, gamma: float, mask=None) -> StepInputs:
    mask = torch.zeros(B, dtype=torch.bool) if mask is None else mask
    frames = torch.zeros(T, B, 2, 4, 4)
    return StepInputs(frames, frames[0, :, :1], labels, teacher, mask, torch.tensor(gamma))


def _cfg(**values) -> Config:
    return Config.from_dict({"kd.alpha": 0.7, "loss.beta": 0.3, **values})


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_the_total_is_the_papers_weighted_sum(parts, gamma):
    model, static, dvs, labels, teacher = parts
    cfg = _cfg()
    out = combine_losses(model, _inputs(labels, teacher, gamma), cfg, static, dvs)  # type: ignore[arg-type]
    sig = torch.sigmoid(model.theta)
    lam, phi = cfg.loss.tet_lambda, cfg.loss.tet_phi
    cls_s = losses.tet_loss(static.logits, labels, lam, phi)
    cls_e = losses.tet_loss(dvs.logits, labels, lam, phi, step_weights=1.0 - sig)
    da = (sig * (1 - losses.linear_cka(static.membrane, dvs.membrane).abs())).mean()
    kd = losses.kd_loss(static.logits.mean(0), teacher, cfg.kd.temperature)
    torch.testing.assert_close(out["loss_cls_e"], cls_e)
    torch.testing.assert_close(out["loss_kd"], kd)
    torch.testing.assert_close(out["loss"], cls_s + cls_e + 0.3 * da + 0.7 * gamma * kd)


def test_kd_on_each_step_when_asked(parts):
    model, static, dvs, labels, teacher = parts
    out = combine_losses(model, _inputs(labels, teacher, 1.0), _cfg(**{"kd.target": "per_step"}), static, dvs)  # type: ignore[arg-type]
    per_step = losses.kd_loss(static.logits, teacher, 4.0)
    torch.testing.assert_close(out["loss_kd"], per_step)
    assert not torch.allclose(per_step, losses.kd_loss(static.logits.mean(0), teacher, 4.0))


def test_masked_kd_skips_the_replaced_samples(parts):
    model, static, dvs, labels, teacher = parts
    mask = torch.tensor([True, False, True, False, False, True])
    cfg = _cfg(**{"kd.mask_replaced": True})
    out = combine_losses(model, _inputs(labels, teacher, 1.0, mask), cfg, static, dvs)  # type: ignore[arg-type]
    kept = losses.kd_loss(static.logits.mean(0)[~mask], teacher[~mask], 4.0)
    torch.testing.assert_close(out["loss_kd"], kept)
    assert not torch.allclose(kept, losses.kd_loss(static.logits.mean(0), teacher, 4.0))


@pytest.mark.parametrize("case", ["kd.enabled=false", "no teacher logits"])
def test_without_a_teacher_there_is_no_kd_term(parts, case):
    model, static, dvs, labels, teacher = parts
    cfg = _cfg(**({"kd.enabled": False} if case == "kd.enabled=false" else {}))
    inputs = _inputs(labels, None if case == "no teacher logits" else teacher, 1.0)
    out = combine_losses(model, inputs, cfg, static, dvs)  # type: ignore[arg-type]
    assert "loss_kd" not in out
    torch.testing.assert_close(out["loss"], out["loss_cls_s"] + out["loss_cls_e"] + 0.3 * out["loss_da"])
