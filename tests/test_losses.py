"""Closed-form checks of every CKD loss (ckd-method.md section 2)."""

import math

import pytest
import torch
import torch.nn.functional as F

from ckd_search import losses


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_cka_identical_inputs_is_one(gen):
    x = torch.randn(16, 40, generator=gen)
    assert losses.linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-5)


def test_cka_invariant_to_orthogonal_transform_and_isotropic_scaling(gen):
    x = torch.randn(16, 12, generator=gen)
    y = torch.randn(16, 9, generator=gen)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen))
    base = losses.linear_cka(x, y)
    assert losses.linear_cka(x @ q, y).item() == pytest.approx(base.item(), abs=1e-5)
    assert losses.linear_cka(3.7 * x, 0.2 * y).item() == pytest.approx(base.item(), abs=1e-5)


def test_cka_stays_fp32_inside_bf16_autocast(gen):
    # the engine's bf16 path runs the losses under autocast, which would cast the Gram matmuls
    x = torch.randn(4, 64, 512, generator=gen)
    y = x + 0.3 * torch.randn(4, 64, 512, generator=gen)
    ref = losses.linear_cka(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = losses.linear_cka(x, y)
    assert under.dtype == torch.float32
    assert torch.allclose(under, ref, rtol=1e-5, atol=1e-6)


def test_cka_in_unit_interval_and_batched(gen):
    x = torch.randn(5, 16, 30, generator=gen)
    y = torch.randn(5, 16, 20, generator=gen)
    cka = losses.linear_cka(x, y)
    assert cka.shape == (5,)
    assert bool(((cka >= 0) & (cka <= 1)).all())
    for t in range(5):
        assert cka[t].item() == pytest.approx(losses.linear_cka(x[t], y[t]).item(), abs=1e-6)


def test_cka_matches_gram_form_with_centering_matrix(gen):
    x = torch.randn(10, 7, generator=gen, dtype=torch.float64)
    y = torch.randn(10, 5, generator=gen, dtype=torch.float64)
    h = torch.eye(10, dtype=torch.float64) - 1.0 / 10
    kc, lc = h @ x @ x.T @ h, h @ y @ y.T @ h
    ref = (kc * lc).sum() / (kc.norm() * lc.norm() + 1e-7)
    assert losses.linear_cka(x, y).item() == pytest.approx(ref.item(), abs=1e-5)


def test_cka_gradient_is_finite_where_one_step_has_no_variance(gen):
    # a step whose membranes are equal across the batch (no spike reached the layer) has a zero
    # Gram norm; the other steps must still train, so the gradient is 0 there, not NaN
    x = torch.randn(3, 8, 6, generator=gen)
    x[1] = 0.5
    x.requires_grad_(True)
    y = torch.randn(3, 8, 5, generator=gen, requires_grad=True)
    losses.domain_alignment_loss(losses.linear_cka(x, y), torch.zeros(3)).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    assert x.grad[0].abs().sum() > 0


def test_cka_rejects_batch_mismatch():
    with pytest.raises(ValueError, match="same batch size"):
        losses.linear_cka(torch.zeros(4, 3), torch.zeros(5, 3))


def test_domain_alignment_loss_weights_steps_by_sigmoid_theta(gen):
    x = torch.randn(3, 8, 6, generator=gen)
    theta = torch.tensor([0.0, 1.0, -2.0])
    cka = losses.linear_cka(x, x.flip(1))
    expected = (torch.sigmoid(theta) * (1 - cka.abs())).mean()
    assert losses.domain_alignment_loss(cka, theta).item() == pytest.approx(expected.item(), abs=1e-6)
    assert losses.domain_alignment_loss(losses.linear_cka(x, x), theta).item() == pytest.approx(0.0, abs=1e-5)
    # |CKA|: a negative alignment counts as much as a positive one
    assert losses.domain_alignment_loss(-cka, theta).item() == pytest.approx(expected.item(), abs=1e-6)


def test_kd_zero_for_equal_logits_and_positive_otherwise(gen):
    z = torch.randn(8, 10, generator=gen)
    assert losses.kd_loss(z, z, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.kd_loss(z, z.flip(0), 4.0).item() > 0


def test_kd_is_batchmean_kl_times_temperature_squared(gen):
    s = torch.randn(8, 10, generator=gen)
    t = torch.randn(8, 10, generator=gen)
    for tau in (1.0, 2.0, 4.0):
        ref = (
            F.kl_div(
                F.log_softmax(s / tau, -1),
                F.log_softmax(t / tau, -1),
                reduction="batchmean",
                log_target=True,
            )
            * tau**2
        )
        assert losses.kd_loss(s, t, tau).item() == pytest.approx(ref.item(), rel=1e-5)


def test_kd_scales_with_temperature_squared_for_small_logits(gen):
    # For logits << tau the KL falls as 1/tau^2; the tau^2 factor keeps the loss (and its
    # gradient scale) about constant across temperatures, as Hinton et al. intend.
    s = 0.05 * torch.randn(8, 10, generator=gen)
    t = 0.05 * torch.randn(8, 10, generator=gen)
    a, b = losses.kd_loss(s, t, 2.0).item(), losses.kd_loss(s, t, 8.0).item()
    assert a / b == pytest.approx(1.0, rel=0.05)


def test_kd_gives_no_gradient_to_teacher(gen):
    s = torch.randn(4, 5, generator=gen, requires_grad=True)
    t = torch.randn(4, 5, generator=gen, requires_grad=True)
    losses.kd_loss(s, t, 4.0).backward()
    assert s.grad is not None and t.grad is None


def test_kd_per_step_averages_over_time(gen):
    s = torch.randn(3, 4, 5, generator=gen)
    t = torch.randn(4, 5, generator=gen)
    ref = sum(losses.kd_loss(s[i], t, 2.0) for i in range(3)) / 3
    assert losses.kd_loss(s, t, 2.0).item() == pytest.approx(ref.item(), rel=1e-5)


def test_masked_kd_ignores_masked_samples(gen):
    s = torch.randn(4, 5, generator=gen)
    t = torch.randn(4, 5, generator=gen)
    keep = torch.tensor([True, True, False, False])
    assert losses.masked_kd_loss(s, t, 3.0, keep).item() == pytest.approx(
        losses.kd_loss(s[:2], t[:2], 3.0).item(), rel=1e-5
    )
    assert losses.masked_kd_loss(s, t, 3.0, torch.zeros(4, dtype=torch.bool)).item() == 0.0


def test_tet_reduces_to_mean_ce_at_lambda_zero(gen):
    logits = torch.randn(4, 6, 10, generator=gen)
    y = torch.randint(0, 10, (6,), generator=gen)
    ref = sum(F.cross_entropy(logits[t], y) for t in range(4)) / 4
    assert losses.tet_loss(logits, y, 0.0, 0.5).item() == pytest.approx(ref.item(), rel=1e-6)


def test_tet_mse_term_and_step_weights(gen):
    logits = torch.randn(3, 2, 4, generator=gen)
    y = torch.tensor([0, 1])
    assert losses.tet_loss(logits, y, 1.0, 0.5).item() == pytest.approx(
        (logits - 0.5).pow(2).mean().item(), rel=1e-6
    )
    w = torch.tensor([1.0, 0.0, 0.0])
    ref = (1 - 1e-3) * F.cross_entropy(logits[0], y) + 1e-3 * (logits[0] - 0.5).pow(2).mean()
    assert losses.tet_loss(logits, y, 1e-3, 0.5, step_weights=w).item() == pytest.approx(
        ref.item() / 3, rel=1e-5
    )
    assert math.isfinite(losses.tet_loss(logits, y, 1e-3, 0.5).item())
