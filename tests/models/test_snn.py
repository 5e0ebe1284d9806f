"""The spiking student: shapes, the membrane tap, state reset, SOP accounting."""

import pytest
import torch
from spikingjelly.activation_based import base
from spikingjelly.activation_based import functional
from spikingjelly.activation_based import neuron
from spikingjelly.activation_based import surrogate

from ckd_search.config import ModelConfig
from ckd_search.models.snn import VGGSNN
from ckd_search.models.snn import MembraneTap
from ckd_search.models.snn import StepwiseBatchNorm2d
from ckd_search.models.snn import make_lif
from ckd_search.models.snn import synaptic_ops


def test_membrane_tap_equals_spikingjelly_stored_sequence():
    cfg = ModelConfig()
    x = (torch.rand(6, 4, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 1.6).requires_grad_()
    tap = MembraneTap(make_lif(cfg))
    spikes, membrane = tap(x)
    ref = neuron.LIFNode(
        tau=2.0,
        v_threshold=0.5,
        v_reset=0.0,
        detach_reset=True,
        step_mode="m",
        surrogate_function=surrogate.PiecewiseQuadratic(alpha=2.0),
        store_v_seq=True,
    )
    x2 = x.detach().clone().requires_grad_()
    ref_spikes = ref(x2)
    assert torch.equal(spikes, ref_spikes)
    assert torch.allclose(membrane, ref.v_seq, atol=1e-6)
    # same gradients through the membrane path
    (membrane.square().sum() + spikes.sum()).backward()
    (ref.v_seq.square().sum() + ref_spikes.sum()).backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-5)


def test_vggsnn_shapes_heads_and_reset():
    cfg = ModelConfig(width=0.0625)
    net = VGGSNN(cfg, num_classes=7, in_size=32)
    x = torch.rand(3, 2, 2, 32, 32)
    out = net(x, head="dvs")
    assert out.logits.shape == (3, 2, 7)
    assert out.membrane.shape == (3, 2, net.feature_dim * 4)  # tap is before the last pooling
    net.reset_state()
    again = net(x, head="dvs")
    assert torch.equal(out.logits, again.logits)  # reset -> same state -> same output
    net.reset_state()
    static = net(x, head="static")  # the same state and backbone: only the head differs
    assert torch.equal(static.membrane, again.membrane)
    assert not torch.equal(static.logits, again.logits)  # separate heads by default
    shared = VGGSNN(ModelConfig(width=0.0625, shared_head=True), 7, 32)
    assert shared.static_head is shared.dvs_head


def test_reset_state_assigns_number_reset_values_without_deepcopy(monkeypatch):
    """Dynamo in torch 2.11 cannot trace copy.deepcopy: spikingjelly's reset_net deep-copies the
    float reset value when the state is already a number (every reset after the first), which
    broke the compiled step on an H100. reset_state assigns the number instead."""

    def no_deepcopy(value, memo=None):
        raise AssertionError(f"copy.deepcopy({value!r}) in a neuron reset")

    net = VGGSNN(ModelConfig(width=0.0625), num_classes=3, in_size=16)
    monkeypatch.setattr(base.copy, "deepcopy", no_deepcopy)  # registering a memory copies too
    x = torch.rand(2, 2, 2, 16, 16)
    first = net(x).logits
    lifs = [m for m in net.modules() if isinstance(m, neuron.LIFNode)]
    assert all(isinstance(lif.v, torch.Tensor) for lif in lifs)  # the forward left a state
    net.reset_state()
    net.reset_state()  # the state is a number now: reset_net's deepcopy branch
    assert all(lif.v == 0.0 and not isinstance(lif.v, torch.Tensor) for lif in lifs)
    assert all(lif.v_seq is None for lif in lifs)  # the tapped trace is dropped, as reset_net does
    assert torch.equal(net(x).logits, first)


def test_the_pooled_cka_tap_averages_the_membrane_as_the_last_pooling_does():
    x = torch.rand(3, 2, 2, 32, 32)
    torch.manual_seed(0)
    net = VGGSNN(ModelConfig(width=0.0625), num_classes=7, in_size=32)
    full = net(x).membrane  # [T, B, C * 4 * 4] at 32 px
    pooled_net = VGGSNN(ModelConfig(width=0.0625, cka_tap="post_pool"), num_classes=7, in_size=32)
    pooled_net.load_state_dict(net.state_dict())
    net.reset_state()
    pooled = pooled_net(x).membrane
    assert pooled.shape == (3, 2, net.feature_dim)
    by_hand = torch.nn.functional.avg_pool2d(full.reshape(6, -1, 4, 4), 2).reshape(3, 2, -1)
    assert torch.allclose(pooled, by_hand)


def test_vggsnn_rejects_tiny_inputs():
    with pytest.raises(ValueError, match="too small"):
        VGGSNN(ModelConfig(width=0.0625), 3, 8)


def test_firing_rates_and_sops():
    net = VGGSNN(ModelConfig(width=0.0625), 5, 16)
    net.record_firing = True
    out = net(torch.rand(2, 4, 2, 16, 16) * 3)
    functional.reset_net(net)
    assert out.firing is not None and out.firing.shape == (8,)
    assert bool(((out.firing >= 0) & (out.firing <= 1)).all())
    sops, energy = synaptic_ops(net, out.firing, 2)
    macs = net.macs_per_step()
    # by hand: Cin * Cout * 9 * H * W per conv (channels 64..512 x 1/16, pooled 16 -> 8 -> 4 -> 2), FC 32 x 5
    assert macs == [2 * 4 * 9 * 256, 4 * 8 * 9 * 256, 8 * 16 * 9 * 64, 16 * 16 * 9 * 64,
                    16 * 32 * 9 * 16, 32 * 32 * 9 * 16, 32 * 32 * 9 * 4, 32 * 32 * 9 * 4, 32 * 5]  # fmt: skip
    assert sops == pytest.approx(sum(r * m for r, m in zip(out.firing.tolist(), macs[1:])) * 2)
    assert energy == pytest.approx((macs[0] * 2 * 4.6 + sops * 0.9) * 1e-6)
    silent, _ = synaptic_ops(net, torch.zeros(8), 2)
    assert silent == 0.0


def test_neuron_dtype_keeps_the_membrane_state_fp32_under_bf16_autocast():
    """The CPU stand-in for spikingjelly's CUDA neuron_storage="fp32": the LIF integrates the bf16
    inputs in fp32 (the membrane tap and the kept state are fp32), spikes go back to bf16."""
    net = VGGSNN(ModelConfig(width=0.0625), num_classes=4, in_size=16)
    x = torch.rand(3, 2, 2, 16, 16, generator=torch.Generator().manual_seed(0)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = net(x)
        net.reset_state()
        net.neuron_dtype = torch.float32
        kept = net(x)
    assert plain.membrane.dtype == torch.bfloat16  # spikingjelly's CPU default: state in the input dtype
    assert kept.membrane.dtype == torch.float32
    lifs = [m for m in net.modules() if isinstance(m, neuron.LIFNode)]
    assert all(lif.v.dtype == torch.float32 for lif in lifs)
    assert kept.logits.dtype == torch.bfloat16 and torch.isfinite(kept.logits).all()
    # fp32 in, fp32 out: the cast is a no-op, so fp32 runs are untouched by the option
    net.reset_state()
    y32 = net(x.float()).logits
    net.reset_state()
    net.neuron_dtype = None
    assert torch.equal(net(x.float()).logits, y32)


def _stepwise_bn_pair(channels: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    loop, fast = StepwiseBatchNorm2d(channels, step_mode="m"), StepwiseBatchNorm2d(channels, step_mode="m")
    with torch.no_grad():
        for bn in (loop, fast):  # affine parameters and running statistics away from 1 and 0
            bn.weight.copy_(torch.rand(channels, generator=torch.Generator().manual_seed(2)) + 0.5)
            bn.bias.copy_(torch.linspace(-1, 1, channels))
            bn.running_mean.fill_(0.3)
            bn.running_var.fill_(2.0)
    return loop, fast


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_step_batchnorm_compiled_form_matches_the_step_loop(monkeypatch, dtype):
    loop, fast = _stepwise_bn_pair(6)
    gen = torch.Generator().manual_seed(0)
    scales = torch.tensor([1.0, 4.0, 0.5, 9.0]).view(4, 1, 1, 1, 1)
    x = torch.randn(4 * 5, 6, 7, 7, generator=gen).to(memory_format=torch.channels_last).unflatten(0, (4, 5))
    x = (x * scales + 2.0).to(dtype).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    weights = torch.randn(x.shape, generator=gen)
    y_loop = loop(x)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # as inside torch.compile
    monkeypatch.setattr(fast, "super_forward", None)  # the step loop must not run
    y_fast = fast(x2)
    assert y_fast.dtype == dtype and y_fast.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.05, "rtol": 0.02}
    assert torch.allclose(y_fast.float(), y_loop.float(), **tol)
    (y_loop.float() * weights).sum().backward()
    (y_fast.float() * weights).sum().backward()
    assert torch.allclose(x2.grad.float(), x.grad.float(), **tol)
    for name in ("weight", "bias"):
        a, b = getattr(fast, name).grad, getattr(loop, name).grad
        assert torch.allclose(a, b, atol=1e-3 if dtype == torch.float32 else 0.5, rtol=1e-4), name
    # running statistics moved once per step, in the loop's order, from the same statistics
    assert torch.allclose(fast.running_mean, loop.running_mean, atol=1e-5)
    assert torch.allclose(fast.running_var, loop.running_var, rtol=1e-4)
    assert int(fast.num_batches_tracked) == int(loop.num_batches_tracked) == 4


def test_per_step_batchnorm_compiled_form_keeps_a_float64_module_and_refuses_one_value(monkeypatch):
    """Where the step loop works, or raises, the compiled form does the same."""
    loop, fast = (bn.double() for bn in _stepwise_bn_pair(2))
    x = torch.randn(3, 4, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    one_value = torch.randn(3, 1, 2, 1, 1, dtype=torch.float64)  # B * H * W = 1: no variance
    y_loop = loop(x)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        loop(one_value)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    y_fast = fast(x)
    assert y_fast.dtype == torch.float64 and fast.running_var.dtype == torch.float64
    assert torch.allclose(y_fast, y_loop, atol=1e-12)
    assert torch.allclose(fast.running_var, loop.running_var, atol=1e-12)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fast(one_value)


def test_per_step_batchnorm_eager_keeps_the_step_loop(monkeypatch):
    """The one-reduction form is 3-4x slower eagerly on a CPU: only compiled steps take it."""

    def refuse(self, x):
        raise AssertionError("the one-reduction form ran in an eager step")

    monkeypatch.setattr(StepwiseBatchNorm2d, "_all_steps_at_once", refuse)
    StepwiseBatchNorm2d(3, step_mode="m")(torch.randn(2, 4, 3, 5, 5))


def test_per_step_batchnorm_compiled_form_keeps_running_statistics_out_of_autograd(monkeypatch):
    bn = StepwiseBatchNorm2d(3, step_mode="m")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    bn(torch.randn(2, 4, 3, 5, 5, requires_grad=True))
    for buffer in (bn.running_mean, bn.running_var):
        assert not buffer.requires_grad and buffer.grad_fn is None


def test_per_step_batchnorm_cumulative_average_takes_the_loop_under_compile(monkeypatch):
    loop, fast = _stepwise_bn_pair(3)
    loop.momentum = fast.momentum = None
    x = torch.randn(3, 4, 3, 5, 5, generator=torch.Generator().manual_seed(1)) * 2 + 1
    y_loop = loop(x)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert torch.allclose(fast(x), y_loop, atol=1e-5)
    assert torch.allclose(fast.running_var, loop.running_var, rtol=1e-5)
    assert int(fast.num_batches_tracked) == 3


def test_per_step_batchnorm_under_torch_compile_matches_eager(monkeypatch):
    calls = []
    one_pass = StepwiseBatchNorm2d._all_steps_at_once

    def spy(self, x):
        calls.append(x.shape[0])
        return one_pass(self, x)

    monkeypatch.setattr(StepwiseBatchNorm2d, "_all_steps_at_once", spy)
    loop, fast = _stepwise_bn_pair(3)
    x = torch.randn(3, 4, 3, 5, 5, generator=torch.Generator().manual_seed(3)) * 3 - 1
    torch._dynamo.reset()
    y = torch.compile(fast)(x)
    assert calls == [3]  # traced through the one-pass form
    assert torch.allclose(y, loop(x), atol=1e-5)
    assert torch.allclose(fast.running_var, loop.running_var, rtol=1e-5)


def test_per_step_batchnorm_normalises_each_step_with_its_own_samples():
    from spikingjelly.activation_based import layer

    from ckd_search.models.snn import make_bn

    gen = torch.Generator().manual_seed(0)
    # steps with very different scales: pooled statistics would leave them apart
    x = torch.randn(3, 8, 4, 5, 5, generator=gen) * torch.tensor([1.0, 5.0, 20.0]).view(3, 1, 1, 1, 1)
    bn = make_bn(ModelConfig(), 4)
    assert isinstance(bn, StepwiseBatchNorm2d)
    y = bn(x)
    for t in range(3):
        mean, var = x[t].mean(dim=(0, 2, 3)), x[t].var(dim=(0, 2, 3), unbiased=False)
        expected = (x[t] - mean.view(1, 4, 1, 1)) / torch.sqrt(var.view(1, 4, 1, 1) + bn.eps)
        assert torch.allclose(y[t], expected, atol=1e-4)
    # running statistics moved once per step (He et al.'s loop), not once per forward
    ref = torch.nn.BatchNorm2d(4)
    for t in range(3):
        ref(x[t])
    assert torch.allclose(bn.running_mean, ref.running_mean) and torch.allclose(
        bn.running_var, ref.running_var
    )
    joint = make_bn(ModelConfig(bn_statistics="joint"), 4)
    assert type(joint) is layer.BatchNorm2d
    assert not torch.allclose(joint(x)[0], y[0], atol=1e-2)
    bn.eval()
    joint.load_state_dict(bn.state_dict())
    joint.eval()
    assert torch.allclose(bn(x), joint(x))  # eval: running statistics either way
