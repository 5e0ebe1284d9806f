"""The CKD training engine: ``fit(config) -> FitResult``. Knows nothing of Ray or MLflow.

Per epoch: learning rate from the cosine schedule, then for each batch P_replace (sliding training)
and gamma (KD switch), one CKD step; metrics stay on the device and are read once per epoch; test
top-1 on the DVS stream (DVS head, logits averaged over T); a full checkpoint every N epochs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ckd_search.checkpoint import has_checkpoint
from ckd_search.checkpoint import load_checkpoint
from ckd_search.checkpoint import save_checkpoint
from ckd_search.color import static_value_maps
from ckd_search.config import Config
from ckd_search.config import config_differences
from ckd_search.data.base import Split
from ckd_search.data.batches import BatchSource
from ckd_search.devices import resolve_device
from ckd_search.errors import TrialFailure
from ckd_search.errors import UserError
from ckd_search.models.cpu_lif import use_fused_cpu_lif
from ckd_search.models.snn import VGGSNN
from ckd_search.models.snn import synaptic_ops
from ckd_search.prepare import Prepared
from ckd_search.prepare import prepare
from ckd_search.prepare import prepare_key
from ckd_search.schedules import Schedules
from ckd_search.step import CKDModel
from ckd_search.step import StepInputs
from ckd_search.step import ckd_losses

__all__ = ["FitResult", "Prepared", "fit", "prepare", "prepare_key", "resolve_device"]

log = logging.getLogger(__name__)
EpochCallback = Callable[[dict[str, float], Path | None], None]


@dataclass
class FitResult:
    metrics: list[dict[str, float]]
    best_test_acc: float
    final_test_acc: float
    epochs_run: int
    config: Config
    teacher_test_acc: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def compile_options(mode: str) -> dict[str, Any]:
    """Inductor options for ``run.compile_mode`` (torch.compile takes ``mode`` or ``options``, not both).

    Layout optimisation stays off (spikingjelly issue #753, performance.md section 4): Inductor's own
    layout choice added layout copies around the LIF kernels; the step sets channels_last itself.
    """
    extra = {
        "default": {},
        "reduce-overhead": {"triton.cudagraphs": True},
        "max-autotune-no-cudagraphs": {"max_autotune": True},
    }[mode]
    return {"layout_optimization": False, **extra}


def compile_fresh(fn: Callable[..., Any], mode: str) -> Callable[..., Any]:
    """``torch.compile(fn)`` for a new model: Dynamo's caches emptied first, static shapes.

    A process builds Trainers one after another (Ray reuses a trial's actor for the next trial; the
    step bench times variants in turn). Dynamo caches compiled code per function, so a new model
    would fail the old entry's guards and compile again with automatically dynamic shapes, and past
    the cache limit (8 entries) silently run eagerly. One compiled model per process at a time is
    what this engine needs, so the old entries (and their CUDA-graph pools) go.
    """
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False, options=compile_options(mode))


def prime_for_compile(model: torch.nn.Module, forward: Callable[[], object]) -> None:
    """Run ``forward`` once eagerly (eval mode, no grad: weights and BatchNorm statistics untouched)
    before torch.compile first traces the model.

    spikingjelly 2.0 builds each Triton neuron execution plan on first use and logs it (loguru,
    ``sys._getframe``). Traced by Dynamo, that log call is a graph break which splits the step for
    the whole run, and the per-layer frames after it then hit the recompile limit and run eagerly:
    19 graphs and 7 breaks for the plain compiled step on an H200. ``prepare_model_for_precision``
    builds the plans with fp32 spikes, but under bf16 autocast the forward asks for bf16 spikes, a
    plan of its own; one eager forward in the real dtype builds every plan the step will ask for.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            forward()
    finally:
        model.train(was_training)


#: run settings that say where a run computes, not what: a resume may change them (a Ray trial
#: retried on a node without a GPU runs with device cpu where its first attempt had auto).
PLACEMENT_FIELDS = ("device", "threads")


def _what_is_computed(config: dict[str, Any]) -> dict[str, Any]:
    run = {k: v for k, v in config.get("run", {}).items() if k not in PLACEMENT_FIELDS}
    return {**config, "run": run}


def frame_dtype(precision: str) -> torch.dtype:
    """The dtype of the frames a batch source hands the step (event counts up to 256 are exact in bf16)."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# --- pairing -----------------------------------------------------------------------------------
class Pairing:
    """Which train image partners each DVS sample: its own (same_image) or a random same-class one."""

    def __init__(self, split: Split, mode: str, device: torch.device) -> None:
        self.mode = mode
        self.own = split.pair_index.to(device)
        labels = split.image_labels.to(device)
        self.order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=int(split.labels.max()) + 1 if len(split.labels) else 1)
        self.counts = counts
        self.starts = torch.cumsum(counts, 0) - counts
        missing = (torch.bincount(split.labels.to(device), minlength=len(counts)) > 0) & (counts == 0)
        if mode == "same_class_random" and bool(missing.any()):
            raise UserError("data.pairing='same_class_random' needs train images of every class")

    def __call__(self, index: Tensor, labels: Tensor, gen: torch.Generator) -> Tensor:
        if self.mode == "same_image":
            return self.own[index]
        u = torch.rand(labels.shape, generator=gen, device=labels.device)
        offset = (u * self.counts[labels]).long().clamp_max(self.counts[labels] - 1)
        return self.order[self.starts[labels] + offset]


# --- metrics kept on the device --------------------------------------------------------------
class DeviceMeter:
    """Sums of 0-dim/1-dim tensors on the device, read once (one host sync) per epoch."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.count = 0

    def add(self, **values: Tensor) -> None:
        for k, v in values.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.count += 1

    def means(self) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = list(self.sums)
        flat = torch.cat([self.sums[k].reshape(-1) for k in keys]).cpu().tolist()
        out: dict[str, float] = {}
        i = 0
        for k in keys:
            n = self.sums[k].numel()
            vals = [v / self.count for v in flat[i : i + n]]
            i += n
            if n == 1:
                out[k] = vals[0]
            else:
                out.update({f"{k}_t{t}": v for t, v in enumerate(vals)})
        return out


# --- the run -----------------------------------------------------------------------------------
class Trainer:
    """State of one run; ``fit`` drives it. Split out so tests can run single steps."""

    def __init__(self, cfg: Config, prepared: Prepared, device: torch.device) -> None:
        self.cfg, self.prepared, self.device = cfg, prepared, device
        data = prepared.data
        if data.timesteps != cfg.data.timesteps or data.size != cfg.data.size:
            raise UserError(
                f"prepared data has T={data.timesteps}, size={data.size} but the config asks for "
                f"data.timesteps={cfg.data.timesteps}, data.size={cfg.data.size}"
            )
        if len(data.train) < cfg.optim.batch_size:
            raise UserError(
                f"optim.batch_size={cfg.optim.batch_size} is larger than the train split "
                f"({len(data.train)} samples)"
            )
        student = VGGSNN(cfg.model, data.num_classes, data.size)
        self.model = CKDModel(student, data.timesteps, cfg.loss.theta_init, cfg.loss.learnable_theta).to(
            device
        )
        self.autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
        if cfg.run.channels_last:  # exact, and 1.06-1.24x on a CPU too (bench/cpu-results.md)
            self.model = self.model.to(memory_format=torch.channels_last)
        if device.type == "cpu" and cfg.run.cpu_lif == "fused":
            use_fused_cpu_lif(self.model.student)
        if device.type == "cuda":
            self._setup_cuda()
        if cfg.run.precision == "bf16":
            self._setup_bf16()
        self.optimizer = torch.optim.AdamW(
            self._param_groups(),
            lr=cfg.optim.lr,
            betas=(cfg.optim.beta1, cfg.optim.beta2),
            eps=cfg.optim.eps,
        )
        self.cpu_gen = torch.Generator().manual_seed(cfg.run.seed)
        self.dev_gen = torch.Generator(device=device).manual_seed(cfg.run.seed + 1)
        dtype = frame_dtype(cfg.run.precision)
        d = cfg.data
        self.train_source = BatchSource(
            data.train.frames,
            data.train.labels,
            batch_size=cfg.optim.batch_size,
            device=device,
            train=True,
            generator=self.cpu_gen,
            crop_padding=d.crop_padding,
            flip=d.flip,
            rotation=d.rotation,
            balanced=d.balanced_sampler,
            drop_last=True,
            dtype=dtype,
        )
        self.test_source = BatchSource(
            data.test.frames,
            data.test.labels,
            batch_size=max(cfg.optim.batch_size, 128),
            device=device,
            train=False,
            generator=self.cpu_gen,
            drop_last=False,
            dtype=dtype,
        )
        self.schedules = Schedules(cfg, len(self.train_source))
        self.pairing = Pairing(data.train, d.pairing, device)
        static = static_value_maps(data.train.images, data.size)
        self.static = static.to(device)
        self.teacher_logits = (
            prepared.teacher_logits.to(device) if prepared.teacher_logits is not None else None
        )
        self.epoch = 0
        self.best_acc = 0.0
        self.history: list[dict[str, float]] = []
        self.loss_fn: Callable[[CKDModel, StepInputs, Config], dict[str, Tensor]] = ckd_losses
        if cfg.run.compile:
            self._prime_for_compile(dtype)  # leaves the neurons in their reset state
            self.loss_fn = compile_fresh(ckd_losses, cfg.run.compile_mode)
        # CUDA graph replays reuse output memory: each step must say a new iteration began.
        self.cudagraphs = cfg.run.compile and cfg.run.compile_mode == "reduce-overhead"

    def _prime_for_compile(self, dtype: torch.dtype) -> None:
        """One eager forward of a 2-sample batch of the real shape and dtype (see prime_for_compile)."""
        student = self.model.student
        d = self.prepared.data
        frames = torch.zeros(d.timesteps, 2, 2, d.size, d.size, device=self.device, dtype=dtype)

        def forward() -> None:
            student.reset_state()
            with self.autocast():
                student(frames, head="dvs")
            student.reset_state()

        prime_for_compile(student, forward)

    def _setup_cuda(self) -> None:
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = True  # fp32 convolutions in TF32 (PyTorch's default)
        # Matmuls stay IEEE fp32 (PyTorch's default, so He et al.'s): the student's only matmuls are
        # its heads and CKA's B x B Gram matrices, where TF32's 10-bit mantissa would cost ~1e-3 of
        # CKA for a few microseconds a step.
        torch.backends.cuda.matmul.allow_tf32 = False

    def _setup_bf16(self) -> None:
        """spikingjelly's bf16 PrecisionConfig: bf16 autocast, fp32 neuron state.

        On CUDA the Triton neuron plan keeps the state fp32 (``neuron_storage="fp32"``). That option
        needs CUDA, so on a CPU the student casts each LIF input to fp32 itself (``neuron_dtype``):
        the same arithmetic, which lets the bf16-vs-fp32 check run on a CPU too.
        """
        from spikingjelly.activation_based.precision import PrecisionConfig
        from spikingjelly.activation_based.precision import prepare_model_for_precision

        cuda = self.device.type == "cuda"
        config = PrecisionConfig(mode="bf16", neuron_storage="fp32" if cuda else None)
        self.autocast = prepare_model_for_precision(self.model, self.device, config).autocast_context
        if not cuda:
            self.model.student.neuron_dtype = torch.float32

    def _param_groups(self) -> list[dict[str, Any]]:
        """AdamW weight decay on weights of rank >= 2 only (timm's filter: no decay on BN, bias, theta)."""
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for p in self.model.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": self.cfg.optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    # -- one epoch -------------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        epoch = self.epoch
        lr = self.schedules.lr(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        meter = DeviceMeter()
        correct = torch.zeros((), device=self.device)
        seen = 0
        n = max(1, len(self.train_source))
        # Per-batch schedule values go to the device once per epoch: indexing them is sync-free.
        p_host = [self.schedules.p_replace(it, epoch) for it in range(n)]
        g_host = [self.schedules.gamma(it, epoch, p) for it, p in enumerate(p_host)]
        table = torch.tensor([p_host, g_host], dtype=torch.float32).to(self.device, non_blocking=True)
        start = time.perf_counter()
        for it, batch in enumerate(self.train_source):
            parts = self.step(batch.frames, batch.labels, batch.index, table[0, it], table[1, it])
            meter.add(**{k: v for k, v in parts.items() if k != "dvs_logits"})
            correct += (parts["dvs_logits"].mean(0).argmax(-1) == batch.labels).sum()
            seen += batch.labels.numel()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        metrics = meter.means()
        metrics = {("train_loss" if k == "loss" else k): v for k, v in metrics.items()}
        metrics.update(
            train_acc=float(correct) / max(1, seen),
            lr=lr,
            p_replace=sum(p_host) / n,
            gamma=sum(g_host) / n,
            epoch_time_s=elapsed,
            pairs_per_s=seen / max(elapsed, 1e-9),
        )
        if not math.isfinite(metrics.get("train_loss", 0.0)):
            raise TrialFailure(
                f"non-finite training loss at epoch {epoch + 1} "
                f"(loss parts: { {k: v for k, v in metrics.items() if k.startswith('loss')} })"
            )
        if self.cfg.loss.method == "ckd":
            for t, s in enumerate(torch.sigmoid(self.model.theta.detach()).cpu().tolist()):
                metrics[f"sigma_theta_t{t}"] = s
        return metrics

    def step(
        self, frames: Tensor, labels: Tensor, index: Tensor, p: Tensor, gamma: Tensor
    ) -> dict[str, Tensor]:
        """One optimizer step on a batch; returns the loss parts as device tensors (no sync)."""
        pair = self.pairing(index, labels, self.dev_gen)
        mask = torch.rand(labels.shape, generator=self.dev_gen, device=self.device) < p
        inputs = StepInputs(
            dvs=frames,
            static=self.static[pair],
            labels=labels,
            teacher_logits=self.teacher_logits[pair] if self.teacher_logits is not None else None,
            replace_mask=mask,
            gamma=gamma,
        )
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with self.autocast():
            parts = self.loss_fn(self.model, inputs, self.cfg)
        self.optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        self.optimizer.step()
        return parts

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Test top-1 on the DVS stream (DVS head, logits averaged over T), firing rates, SOPs."""
        self.model.eval()
        student = self.model.student
        student.record_firing = True
        correct = torch.zeros((), device=self.device)
        firing = None
        batches = 0
        total = 0
        for batch in self.test_source:
            student.reset_state()
            with self.autocast():
                out = student(batch.frames, head="dvs")
            student.reset_state()
            correct += (out.logits.float().mean(0).argmax(-1) == batch.labels).sum()
            firing = out.firing if firing is None else firing + out.firing
            batches += 1
            total += batch.labels.numel()
        student.record_firing = False
        # timesteps is a config value, reported so a search can trade accuracy against it
        metrics = {
            "test_acc": float(correct) / max(1, total),
            "timesteps": float(self.prepared.data.timesteps),
        }
        if firing is not None:
            rates = firing / batches
            sops, energy = synaptic_ops(student, rates, self.prepared.data.timesteps)
            metrics.update({f"firing_rate_l{i}": r for i, r in enumerate(rates.tolist())})
            metrics.update(sops_per_sample=sops, energy_uj=energy)
        return metrics

    # -- checkpoints -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "best_acc": self.best_acc,
            "history": self.history,
            "cpu_gen": self.cpu_gen.get_state(),
            "dev_gen": self.dev_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": list(random.getstate()[1]),
            "config": self.cfg.to_dict(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        saved = state.get("config")
        old = _what_is_computed(saved if isinstance(saved, dict) else {})
        new = _what_is_computed(self.cfg.to_dict())
        if old != new:
            changed = config_differences(old, new)
            raise UserError(
                f"the checkpoint was written by a run with a different config ({changed}); "
                "resume needs the same config (use a fresh output directory otherwise)"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.best_acc, self.history = (
            int(state["epoch"]),
            float(state["best_acc"]),
            state["history"],
        )
        self.cpu_gen.set_state(state["cpu_gen"])
        try:
            self.dev_gen.set_state(state["dev_gen"])
        except RuntimeError:  # written on the other device type (CUDA's state is 16 bytes, a CPU's 5056)
            self.dev_gen.manual_seed(self.cfg.run.seed + 1 + self.epoch)
            log.warning(
                "the checkpoint's pairing/mask random stream is of another device type than %s: it "
                "restarts from a seed, so the resumed run is not bit-identical to an uninterrupted one",
                self.device.type,
            )
        torch.set_rng_state(state["torch_rng"])
        random.setstate((3, tuple(state["python_rng"]), None))
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)


def fit(
    config: Config,
    on_epoch_end: EpochCallback | None = None,
    *,
    prepared: Prepared | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> FitResult:
    """Train one CKD run; call ``on_epoch_end(metrics, checkpoint_dir_or_None)`` after each epoch.

    With ``resume=True`` and a checkpoint in ``checkpoint_dir`` the run continues exactly where the
    checkpoint left it (bit-exact on a CPU with the same config).
    """
    cfg = config
    device = resolve_device(cfg.run.device)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    if prepared is None:
        prepared = prepare(cfg)
    elif prepared.key != prepare_key(cfg):
        raise UserError("the prepared data does not match this config (data.* or teacher.* differ)")
    seed_everything(cfg.run.seed)  # after prepare: the student starts the same whether or not it was cached
    trainer = Trainer(cfg, prepared, device)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume and has_checkpoint(ckpt):
        assert ckpt is not None
        trainer.load_state(load_checkpoint(ckpt))
        log.info("resumed from %s at epoch %d", ckpt, trainer.epoch)
    budget = trainer.schedules.budget
    for epoch in _epochs(trainer.epoch, budget):
        trainer.epoch = epoch
        metrics = trainer.train_epoch()
        last = epoch + 1 == budget
        if (epoch + 1) % cfg.run.eval_every == 0 or last:
            metrics.update(trainer.evaluate())
            trainer.best_acc = max(trainer.best_acc, metrics["test_acc"])
        metrics["best_test_acc"] = trainer.best_acc
        metrics["epoch"] = float(epoch + 1)
        if prepared.teacher_test_acc is not None:
            metrics["teacher_test_acc"] = prepared.teacher_test_acc
        trainer.history.append(metrics)
        trainer.epoch = epoch + 1
        written = None
        if (
            ckpt is not None
            and cfg.run.checkpoint_every
            and ((epoch + 1) % cfg.run.checkpoint_every == 0 or last)
        ):
            written = save_checkpoint(ckpt, trainer.state())
        log.info(_epoch_line(metrics, budget))
        if on_epoch_end is not None:
            on_epoch_end(dict(metrics), written)
    final = next((m["test_acc"] for m in reversed(trainer.history) if "test_acc" in m), float("nan"))
    return FitResult(
        metrics=trainer.history,
        best_test_acc=trainer.best_acc,
        final_test_acc=final,
        epochs_run=trainer.epoch,
        config=cfg,
        teacher_test_acc=prepared.teacher_test_acc,
    )


def _epochs(start: int, stop: int) -> Iterator[int]:
    yield from range(start, stop)


def _epoch_line(m: dict[str, float], total: int) -> str:
    parts = [f"epoch {int(m['epoch'])}/{total}", f"loss {m.get('train_loss', float('nan')):.4f}"]
    for key in ("loss_cls_s", "loss_cls_e", "loss_kd", "loss_da"):
        if key in m:
            parts.append(f"{key[5:]} {m[key]:.3f}")
    if "test_acc" in m:
        parts.append(f"test {m['test_acc']:.4f} (best {m['best_test_acc']:.4f})")
    parts.append(f"gamma {m['gamma']:.3f} P {m['p_replace']:.3f} lr {m['lr']:.2e}")
    parts.append(f"{m['epoch_time_s']:.1f}s {m['pairs_per_s']:.0f} pairs/s")
    return " | ".join(parts)
