"""The fused CPU LIF against spikingjelly's own: spikes, membranes and gradients, and the swap."""

import pytest
import torch
from spikingjelly.activation_based import neuron
from spikingjelly.activation_based import surrogate

from ckd_search.config import Config
from ckd_search.config import ModelConfig
from ckd_search.models.cpu_lif import FusedCpuLIF
from ckd_search.models.cpu_lif import use_fused_cpu_lif
from ckd_search.models.snn import VGGSNN
from ckd_search.models.snn import MembraneTap
from ckd_search.models.snn import make_lif


def _pair(store_v_seq: bool, **cfg: float) -> tuple[neuron.LIFNode, neuron.LIFNode]:
    ref, fused = make_lif(ModelConfig(**cfg)), make_lif(ModelConfig(**cfg), FusedCpuLIF)
    ref.store_v_seq = fused.store_v_seq = store_v_seq
    return ref, fused


def _inputs(shape: tuple[int, ...], seed: int, memory_format: torch.memory_format = torch.contiguous_format):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 1.2 + 0.3
    if memory_format is torch.channels_last:  # [T, B, C, H, W] with channels-last steps, as the engine's
        x = x.flatten(0, 1).to(memory_format=memory_format).unflatten(0, shape[:2])
    return x


@pytest.mark.parametrize("store_v_seq", [False, True])
@pytest.mark.parametrize("timesteps", [1, 3, 7])
def test_fused_lif_matches_spikingjelly_forward_and_backward(store_v_seq, timesteps):
    ref, fused = _pair(store_v_seq, tau=2.0, v_threshold=0.5, surrogate_alpha=2.0)
    x = _inputs((timesteps, 4, 3, 5, 5), seed=timesteps).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    spikes, ref_spikes = fused(x), ref(x2)
    assert torch.equal(spikes, ref_spikes)
    assert 0.05 < spikes.mean().item() < 0.95  # both firing and silent neurons are exercised
    loss, ref_loss = (spikes * weights).sum(), (ref_spikes * weights).sum()
    if store_v_seq:
        assert torch.allclose(fused.v_seq, ref.v_seq, atol=1e-6)
        loss = loss + fused.v_seq.square().sum()
        ref_loss = ref_loss + ref.v_seq.square().sum()
    loss.backward()
    ref_loss.backward()
    assert x.grad.abs().sum() > 0
    assert torch.allclose(x.grad, x2.grad, atol=1e-5, rtol=1e-5)


def test_fused_lif_follows_the_config_and_keeps_channels_last():
    ref, fused = _pair(True, tau=3.0, v_threshold=0.8, surrogate_alpha=1.5)
    x = _inputs((4, 2, 8, 6, 6), seed=1, memory_format=torch.channels_last).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    spikes, ref_spikes = fused(x), ref(x2)
    assert torch.equal(spikes, ref_spikes)
    assert spikes.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    (fused.v_seq.sum() + spikes.sum()).backward()
    (ref.v_seq.sum() + ref_spikes.sum()).backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("store_v_seq", [False, True])
def test_fused_lif_keeps_its_last_membrane_as_state_as_spikingjelly_does(store_v_seq):
    """A second call without a reset continues from the first's membrane, gradients included."""
    ref, fused = _pair(store_v_seq)
    first, second = _inputs((2, 3, 4), seed=2), _inputs((2, 3, 4), seed=3)
    x, x2 = first.clone().requires_grad_(), first.clone().requires_grad_()
    spikes, ref_spikes = fused(x), ref(x2)
    assert torch.allclose(fused.v, ref.v, atol=1e-6)
    assert torch.equal(fused(second), ref(second))  # continued from the same state
    # the loss reaches the first call's input only through the state carried into the second
    (spikes.sum() + fused(second).sum() + fused.v.square().sum()).backward()
    (ref_spikes.sum() + ref(second).sum() + ref.v.square().sum()).backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-5, rtol=1e-5)


def test_fused_lif_leaves_bf16_input_to_spikingjelly():
    """spikingjelly computes a bf16 input in bf16; the fused kernel would compute it in fp32."""
    ref, fused = _pair(True)
    x = _inputs((3, 2, 8), seed=5).bfloat16()
    assert torch.equal(fused(x), ref(x))
    assert fused.v_seq.dtype == torch.bfloat16


def test_fused_lif_under_compile_takes_spikingjelly_path(monkeypatch):
    """Dynamo in torch 2.11 (the GPU machines') breaks the graph at the fused path's out= writes."""
    from ckd_search.models import cpu_lif

    def refuse(*args: object) -> None:
        raise AssertionError("the fused autograd function ran under torch.compile")

    ref, fused = _pair(True)
    x = _inputs((3, 2, 4), seed=4)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(cpu_lif._LIFSequence, "apply", refuse)
    assert torch.equal(fused(x), ref(x))
    assert torch.equal(fused.v_seq, ref.v_seq)


def test_fused_lif_output_may_be_changed_in_place_before_backward():
    """As with spikingjelly's LIF: the fused function keeps no reference to the spikes it returns."""
    ref, fused = _pair(True)
    x = _inputs((3, 2, 6), seed=6).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    spikes, ref_spikes = fused(x), ref(x2)
    spikes.mul_(0.5)
    ref_spikes.mul_(0.5)
    (spikes.sum() + fused.v_seq.sum()).backward()
    (ref_spikes.sum() + ref.v_seq.sum()).backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "change",
    [
        {"surrogate_function": surrogate.ATan()},
        {"detach_reset": False},
        {"v_reset": None},  # soft reset
        {"decay_input": False},
        {"step_mode": "s"},
    ],
)
def test_fused_lif_refuses_a_neuron_it_does_not_compute(change):
    kwargs = {
        "tau": 2.0,
        "decay_input": True,
        "v_reset": 0.0,
        "detach_reset": True,
        "surrogate_function": surrogate.PiecewiseQuadratic(alpha=2.0),
        "step_mode": "m",
    }
    FusedCpuLIF(**kwargs)  # the neuron it does compute
    with pytest.raises(ValueError, match="PiecewiseQuadratic"):
        FusedCpuLIF(**(kwargs | change))


def test_fused_lif_fires_at_exactly_the_threshold():
    ref, fused = _pair(False, tau=2.0, v_threshold=0.5)
    x = torch.tensor([[1.0, 0.96, 1.04]])  # T = 1: H = X / 2, exactly 0.5 for the first neuron
    spikes = fused(x)
    assert spikes.tolist() == [[1.0, 0.0, 1.0]] and torch.equal(spikes, ref(x))


def test_swap_keeps_the_student_output_and_state_dict():
    torch.manual_seed(0)
    net = VGGSNN(ModelConfig(width=0.0625), num_classes=5, in_size=16)
    keys = list(net.state_dict())
    x = torch.rand(3, 2, 2, 16, 16)
    ref = net(x)
    net.reset_state()
    use_fused_cpu_lif(net)
    lifs = [m for m in net.modules() if isinstance(m, neuron.LIFNode)]
    assert len(lifs) == 8 and all(isinstance(m, FusedCpuLIF) for m in lifs)
    tap = next(m for m in net.modules() if isinstance(m, MembraneTap))
    assert tap.lif.store_v_seq
    out = net(x)
    assert torch.allclose(out.logits, ref.logits, atol=1e-5)
    assert torch.allclose(out.membrane, ref.membrane, atol=1e-5)
    assert list(net.state_dict()) == keys
    use_fused_cpu_lif(net, fused=False)
    assert not any(isinstance(m, FusedCpuLIF) for m in net.modules())


def test_a_student_without_the_detached_reset_keeps_spikingjelly_lif():
    net = VGGSNN(ModelConfig(width=0.0625, detach_reset=False), num_classes=5, in_size=16)
    use_fused_cpu_lif(net)  # the fused kernel has no gradient through the reset
    lifs = [m for m in net.modules() if isinstance(m, neuron.LIFNode)]
    assert len(lifs) == 8 and not any(isinstance(m, FusedCpuLIF) for m in lifs)
    assert not any(m.detach_reset for m in lifs)


def _trainer(kernel: str):
    from ckd_search.engine import Trainer
    from ckd_search.perf.synthetic import synthetic_prepared

    cfg = Config.from_dict(
        {"data.size": 16, "data.timesteps": 3, "model.width": 0.0625, "optim.batch_size": 8}
        | {"run.device": "cpu", "run.cpu_lif": kernel}
    )
    torch.manual_seed(0)
    prepared = synthetic_prepared(cfg, 4, n_train=16, n_test=8, seed=0)
    return Trainer(cfg, prepared, torch.device("cpu"))


def test_trainer_on_cpu_uses_the_configured_lif_and_both_train_alike():
    fused, library = _trainer("fused"), _trainer("spikingjelly")
    for trainer, expected in ((fused, True), (library, False)):
        lifs = [m for m in trainer.model.student.modules() if isinstance(m, neuron.LIFNode)]
        assert len(lifs) == 8 and all(isinstance(m, FusedCpuLIF) == expected for m in lifs)
    torch.manual_seed(1)
    frames = torch.rand(3, 8, 2, 16, 16)
    labels, index = torch.arange(8) % 4, torch.arange(8)
    half, one = torch.tensor(0.5), torch.tensor(1.0)
    parts = [t.step(frames, labels, index, half, one) for t in (fused, library)]
    assert torch.allclose(parts[0]["loss"], parts[1]["loss"], rtol=1e-5)
    for a, b in zip(fused.model.parameters(), library.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), "one AdamW step from the same gradients"
