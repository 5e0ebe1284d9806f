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


# --- the two streams through a real (tiny) student: heads and neuron resets -------------------
def _tiny_model(**values):
    from ckd_search.models.snn import VGGSNN
    from ckd_search.step import CKDModel

    torch.manual_seed(0)
    cfg = Config.from_dict({"data.size": 16, "data.timesteps": T, "model.width": 0.0625, **values})
    student = VGGSNN(cfg.model, C, 16)
    return CKDModel(student, T, cfg.loss.theta_init, cfg.loss.learnable_theta), cfg


def _stream_inputs(gamma: float = 1.0) -> StepInputs:
    gen = torch.Generator().manual_seed(1)
    dvs = (torch.rand(T, B, 2, 16, 16, generator=gen) < 0.3).float() * 2.0
    static = torch.rand(B, 1, 16, 16, generator=gen)
    labels = torch.randint(0, C, (B,), generator=gen)
    teacher = torch.randn(B, C, generator=gen)
    mask = torch.tensor([True, False, False, True, False, False])
    return StepInputs(dvs, static, labels, teacher, mask, torch.tensor(gamma))


def _record_calls(student) -> list:
    """Wrap the student's forward and reset_state: the calls in order, ("forward", head) or "reset"."""
    calls: list = []
    forward, reset = student.forward, student.reset_state

    def spy_forward(x, head="dvs"):
        calls.append(("forward", head))
        return forward(x, head=head)

    def spy_reset():
        calls.append("reset")
        reset()

    student.forward = spy_forward
    student.reset_state = spy_reset
    return calls


@pytest.mark.parametrize(("method", "heads"), [("ckd", ["static", "dvs"]), ("dvs_only", ["dvs"])])
def test_each_stream_runs_through_its_head_from_a_reset_state(method, heads):
    from ckd_search.step import ckd_losses

    model, cfg = _tiny_model(**{"loss.method": method})
    calls = _record_calls(model.student)
    ckd_losses(model, _stream_inputs(), cfg)  # type: ignore[arg-type]
    forwards = [i for i, c in enumerate(calls) if c != "reset"]
    assert [calls[i][1] for i in forwards] == heads  # hybrid stream first, on the static head
    # every forward starts from reset neurons, and none leaves its state behind for the next step
    starts = [-1, *forwards]
    for before, at in zip(starts, forwards):
        assert "reset" in calls[before + 1 : at], calls
    assert "reset" in calls[forwards[-1] + 1 :], calls


def test_the_dvs_stream_is_the_dvs_heads_output_of_fresh_neurons():
    """The DVS logits do not depend on the hybrid stream run just before (neurons reset in between),
    and the head each stream trains is the one its name says (gradients reach exactly that head)."""
    from ckd_search.step import ckd_losses

    model, cfg = _tiny_model()
    inputs = _stream_inputs()
    out = ckd_losses(model, inputs, cfg)  # type: ignore[arg-type]
    out["loss"].backward()
    student = model.student
    student.reset_state()
    fresh = student(inputs.dvs, head="dvs").logits.detach()
    student.reset_state()
    torch.testing.assert_close(out["dvs_logits"], fresh, rtol=0, atol=0)
    assert student.static_head is not student.dvs_head
    for head in (student.static_head, student.dvs_head):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_the_dvs_only_baseline_trains_the_dvs_head_alone():
    from ckd_search.step import ckd_losses

    model, cfg = _tiny_model(**{"loss.method": "dvs_only"})
    inputs = _stream_inputs()
    out = ckd_losses(model, inputs, cfg)  # type: ignore[arg-type]
    out["loss"].backward()
    student = model.student
    assert student.static_head.weight.grad is None
    assert student.dvs_head.weight.grad is not None and student.dvs_head.weight.grad.abs().sum() > 0
    student.reset_state()
    fresh = student(inputs.dvs, head="dvs").logits.detach()
    torch.testing.assert_close(out["dvs_logits"], fresh, rtol=0, atol=0)
