"""run.compile: the whole CKD step is one graph with no breaks and no recompiles (CPU Inductor).

The GPU path adds spikingjelly's Triton neuron ops; on a CPU spikingjelly's LIF module runs its
Torch loop instead (``run.cpu_lif=spikingjelly``), so this checks everything of ours around the
neuron kernel (streams, replacement, CKA, KD, TET, heads) and spikingjelly's module code the GPU
step traces too (its state and reset). The engine's fused CPU LIF is checked as well.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch._dynamo.utils
from spikingjelly.activation_based import layer

from ckd_search.engine import Trainer
from ckd_search.engine import prime_for_compile
from ckd_search.perf import step_bench
from ckd_search.perf.synthetic import synthetic_prepared


def test_prime_for_compile_leaves_weights_statistics_and_mode_alone():
    model = torch.nn.Sequential(
        layer.Conv2d(2, 4, 3, padding=1, step_mode="m"), layer.BatchNorm2d(4, step_mode="m")
    )
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def forward() -> None:
        calls.append(torch.is_grad_enabled())
        model(torch.randn(3, 2, 2, 8, 8))

    prime_for_compile(model, forward)
    assert calls == [False]  # ran once, without autograd
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched


@pytest.mark.parametrize(
    "precision,cpu_lif",
    [
        ("fp32", "spikingjelly"),
        ("fp32", "fused"),
        pytest.param("bf16", "spikingjelly", marks=pytest.mark.slow),  # bf16: 75 s
    ],
)
def test_compiled_step_is_one_graph_across_epochs_and_evaluations(precision, cpu_lif):
    args = step_bench.parse_args(["--smoke"])
    device = torch.device("cpu")
    overrides = {"run.compile": True, "run.epochs": 2, "run.precision": precision, "run.cpu_lif": cpu_lif}
    cfg = step_bench.ckd_config(args, overrides, 2, 16, device)
    prepared = synthetic_prepared(cfg, 10, n_train=16, n_test=8, seed=0)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    trainer = Trainer(cfg, prepared, device)
    for epoch in range(2):  # 2 steps an epoch; p and gamma move every step
        trainer.epoch = epoch
        metrics = trainer.train_epoch()
        assert math.isfinite(metrics["train_loss"])
        trainer.evaluate()  # eager, in eval mode, between epochs
    counters = torch._dynamo.utils.counters
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1


def test_a_new_trainer_compiles_afresh_with_static_shapes(monkeypatch):
    """Trainers one after another in a process (Ray reuses actors) do not pile up Dynamo entries:
    the second would otherwise compile a dynamic-shape entry beside the first, and past 8 entries
    run eagerly. Dynamo's eager backend keeps this to seconds (the caching is Dynamo's, not
    Inductor's)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from ckd_search.step import ckd_losses

    compile_ = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda fn, **kw: compile_(fn, backend="eager", dynamic=kw["dynamic"])
    )
    args = step_bench.parse_args(["--smoke"])
    device = torch.device("cpu")
    for batch in (4, 6):
        overrides = {"run.compile": True, "optim.batch_size": batch, "run.cpu_lif": "spikingjelly"}
        cfg = step_bench.ckd_config(args, overrides, 2, 16, device)
        trainer = Trainer(cfg, synthetic_prepared(cfg, 10, n_train=2 * batch, n_test=4, seed=0), device)
        trainer.train_epoch()
        assert len(_debug_get_cache_entry_list(ckd_losses)) == 1
