"""The CKD engine on the real embedded data: step semantics, overfitting, resume, faults, learning."""

import dataclasses
import logging
import math

import pytest
import torch

from ckd_search.config import Config
from ckd_search.engine import Pairing
from ckd_search.engine import Trainer
from ckd_search.engine import fit
from ckd_search.errors import TrialFailure
from ckd_search.errors import UserError
from ckd_search.prepare import Prepared
from ckd_search.prepare import prepare
from ckd_search.step import hybrid_stream

TIMING = {"epoch_time_s", "pairs_per_s"}


def tiny(tmp_path, **extra) -> Config:
    values = {
        "data.limit": 192,
        "data.size": 16,
        "data.timesteps": 3,
        "model.width": 0.0625,
        "teacher.epochs": 1,
        "run.epochs": 3,
        "optim.batch_size": 32,
        "data.cache_dir": str(tmp_path / "cache"),
        "run.device": "cpu",
    }
    values.update(extra)
    return Config.from_dict(values)


@pytest.fixture(scope="module")
def prepared_tiny(tmp_path_factory) -> tuple[Config, Prepared]:
    cfg = tiny(tmp_path_factory.mktemp("engine"))
    return cfg, prepare(cfg)


def test_hybrid_stream_replaces_exactly_the_masked_samples():
    dvs = torch.rand(4, 5, 2, 6, 6)
    static = torch.rand(5, 1, 6, 6)
    mask = torch.tensor([True, False, True, False, False])
    hybrid = hybrid_stream(dvs, static, mask)
    assert torch.equal(hybrid[:, mask], dvs[:, mask])
    for b in (1, 3, 4):
        for t in range(4):
            assert torch.equal(hybrid[t, b, 0], static[b, 0]) and torch.equal(hybrid[t, b, 1], static[b, 0])


def test_replaced_samples_are_their_paired_dvs_samples_in_a_step(prepared_tiny):
    cfg, prep = prepared_tiny
    trainer = Trainer(cfg, prep, torch.device("cpu"))
    seen = {}

    def spy(model, inputs, config):
        seen["inputs"] = inputs
        return trainer_loss(model, inputs, config)

    from ckd_search.step import ckd_losses as trainer_loss

    trainer.loss_fn = spy
    batch = next(iter(trainer.train_source))
    trainer.step(batch.frames, batch.labels, batch.index, torch.tensor(0.5), torch.tensor(1.0))
    inputs = seen["inputs"]
    hybrid = hybrid_stream(inputs.dvs, inputs.static, inputs.replace_mask)
    assert 0 < int(inputs.replace_mask.sum()) < len(batch.labels)
    assert torch.equal(hybrid[:, inputs.replace_mask], batch.frames[:, inputs.replace_mask])
    # same_image pairing: the static input is the V channel of the sample's own image
    own = prep.data.train.pair_index[batch.index]
    assert torch.equal(inputs.static, trainer.static[own])
    # teacher logits belong to the paired image
    assert torch.equal(inputs.teacher_logits, prep.teacher_logits[own])


def test_same_class_random_pairing_draws_train_images_of_the_class(prepared_tiny):
    _, prep = prepared_tiny
    split = prep.data.train
    pairing = Pairing(split, "same_class_random", torch.device("cpu"))
    labels = split.labels[:64]
    drawn = pairing(torch.arange(64), labels, torch.Generator().manual_seed(0))
    assert torch.equal(split.image_labels[drawn], labels)
    assert int(drawn.max()) < len(split.images)
    again = pairing(torch.arange(64), labels, torch.Generator().manual_seed(1))
    assert not torch.equal(drawn, again)  # random instance, not the same image


def test_overfits_one_batch(prepared_tiny):
    cfg, prep = prepared_tiny
    cfg = cfg.replace(**{"optim.lr": 5e-3, "model.width": 0.25})
    trainer = Trainer(cfg, prep, torch.device("cpu"))
    batch = next(iter(trainer.train_source))
    losses = []
    for _ in range(60):
        parts = trainer.step(batch.frames, batch.labels, batch.index, torch.tensor(0.0), torch.tensor(1.0))
        losses.append(float(parts["loss"].detach()))
    acc = float((parts["dvs_logits"].mean(0).argmax(-1) == batch.labels).float().mean())
    assert losses[-1] < 0.5 * losses[0]
    assert acc > 0.8


def test_bf16_trains_on_a_cpu_with_fp32_neuron_state(prepared_tiny):
    cfg, prep = prepared_tiny
    cfg = cfg.replace(**{"run.precision": "bf16", "optim.lr": 5e-3, "model.width": 0.25})
    trainer = Trainer(cfg, prep, torch.device("cpu"))
    assert trainer.model.student.neuron_dtype == torch.float32
    batch = next(iter(trainer.train_source))
    assert batch.frames.dtype == torch.bfloat16
    losses = []
    for _ in range(30):
        parts = trainer.step(batch.frames, batch.labels, batch.index, torch.tensor(0.0), torch.tensor(1.0))
        losses.append(float(parts["loss"].detach()))
    assert parts["dvs_logits"].dtype == torch.bfloat16  # autocast is on
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # fp32 master weights
    assert math.isfinite(losses[-1]) and losses[-1] < 0.7 * losses[0]
    assert 0.0 <= trainer.evaluate()["test_acc"] <= 1.0


def strip(history):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in history]


def test_resume_continues_bit_exactly(prepared_tiny, tmp_path):
    cfg, prep = prepared_tiny
    straight = fit(cfg, prepared=prep, checkpoint_dir=tmp_path / "a")

    class Crash(Exception):
        pass

    def crash_after_two(metrics, ckpt):
        if metrics["epoch"] == 2:
            raise Crash

    with pytest.raises(Crash):
        fit(cfg, crash_after_two, prepared=prep, checkpoint_dir=tmp_path / "b")
    resumed = fit(cfg, prepared=prep, checkpoint_dir=tmp_path / "b", resume=True)
    assert resumed.epochs_run == 3
    assert strip(resumed.metrics) == strip(straight.metrics)
    a = torch.load(tmp_path / "a" / "state.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "state.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_starts_the_same_whether_the_teacher_was_cached_or_trained(tmp_path):
    cfg = tiny(tmp_path, **{"run.epochs": 1})
    trained_here = fit(cfg)  # cache miss: the teacher is fine-tuned in this call
    from_cache = fit(cfg)
    assert trained_here.metrics[0]["train_loss"] == from_cache.metrics[0]["train_loss"]
    assert trained_here.best_test_acc == from_cache.best_test_acc


def test_resume_refuses_a_different_config(prepared_tiny, tmp_path):
    cfg, prep = prepared_tiny
    fit(cfg.replace(**{"run.epochs": 2}), prepared=prep, checkpoint_dir=tmp_path)
    with pytest.raises(UserError, match="different config"):
        fit(
            cfg.replace(**{"run.epochs": 2, "kd.k": 3.0}),
            prepared=prep,
            checkpoint_dir=tmp_path,
            resume=True,
        )


def test_resume_may_move_to_another_device_or_thread_count(prepared_tiny, tmp_path):
    # a Ray trial retried on a node without a GPU has run.device cpu where its first attempt had auto
    cfg, prep = prepared_tiny
    fit(cfg.replace(**{"run.epochs": 2}), prepared=prep, checkpoint_dir=tmp_path)
    moved = cfg.replace(**{"run.epochs": 2, "run.device": "auto", "run.threads": 1})
    assert fit(moved, prepared=prep, checkpoint_dir=tmp_path, resume=True).epochs_run == 2


def test_corrupt_checkpoint_is_refused(prepared_tiny, tmp_path):
    cfg, prep = prepared_tiny
    fit(cfg.replace(**{"run.epochs": 2}), prepared=prep, checkpoint_dir=tmp_path)
    state = tmp_path / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        fit(cfg.replace(**{"run.epochs": 2}), prepared=prep, checkpoint_dir=tmp_path, resume=True)


def test_metrics_every_epoch_and_schedules(prepared_tiny):
    cfg, prep = prepared_tiny
    seen = []
    result = fit(cfg.replace(**{"kd.e_th": 1.0, "kd.k": 1000.0}), lambda m, c: seen.append(m), prepared=prep)
    assert [m["epoch"] for m in seen] == [1.0, 2.0, 3.0]
    assert [m["gamma"] for m in seen] == pytest.approx([1.0, 0.5, 0.0])
    assert seen[0]["p_replace"] < seen[1]["p_replace"] < seen[2]["p_replace"] < 1
    for key in (
        "test_acc",
        "best_test_acc",
        "loss_kd",
        "loss_da",
        "loss_cls_s",
        "loss_cls_e",
        "cka_t0",
        "sigma_theta_t2",
        "firing_rate_l7",
        "sops_per_sample",
        "energy_uj",
        "pairs_per_s",
        "lr",
        "teacher_test_acc",
    ):
        assert key in seen[-1], key
    assert result.best_test_acc == max(m["test_acc"] for m in seen)
    assert all(math.isfinite(v) for v in seen[-1].values())
    assert seen[-1]["timesteps"] == cfg.data.timesteps  # a searchable objective (accuracy vs T)
    from ckd_search.search.space import ENGINE_METRICS  # what a search space may name as its metric

    assert ENGINE_METRICS <= set(seen[-1]), ENGINE_METRICS - set(seen[-1])


def test_ablations_run(prepared_tiny):
    cfg, prep = prepared_tiny
    one = {"run.epochs": 2}
    for extra in (
        {"kd.schedule": "constant"},
        {"kd.schedule": "adaptive"},
        {"loss.replace": "none"},
        {"loss.replace": "step"},
        {"model.shared_head": True},
        {"kd.target": "per_step"},
        {"kd.mask_replaced": True},
        {"kd.units": "iteration"},
    ):
        result = fit(cfg.replace(**one, **extra), prepared=prep)
        assert math.isfinite(result.metrics[-1]["train_loss"]), extra
    no_kd = cfg.replace(**one, **{"kd.enabled": False})
    result = fit(no_kd)
    assert "loss_kd" not in result.metrics[-1] and result.teacher_test_acc is None
    dvs_only = fit(cfg.replace(**one, **{"loss.method": "dvs_only"}))
    assert "loss_da" not in dvs_only.metrics[-1]


def test_compress_fidelity_lays_schedules_over_the_budget(prepared_tiny):
    cfg, prep = prepared_tiny
    base = {"run.epochs": 12, "run.max_epochs": 2, "kd.e_th": 6.0, "kd.k": 1000.0}
    truncated = fit(cfg.replace(**base), prepared=prep)
    compressed = fit(cfg.replace(**base, **{"run.fidelity": "compress"}), prepared=prep)
    assert truncated.epochs_run == compressed.epochs_run == 2
    assert [m["gamma"] for m in truncated.metrics] == pytest.approx([1.0, 1.0])
    assert [m["gamma"] for m in compressed.metrics] == pytest.approx([1.0, 0.5])  # e_th 6/12 of 2 epochs


@pytest.mark.parametrize("units", ["epoch", "iteration"])
def test_compressed_switch_has_the_full_runs_shape(units):
    """gamma over the fraction of the run is the same when 300 epochs are compressed into 30."""
    from ckd_search.engine import Schedules

    kd = {"kd.e_th": 150.0 * (7 if units == "iteration" else 1), "kd.k": 0.1, "kd.units": units}
    full = Schedules(Config.from_dict({"run.epochs": 300, **kd}), 7)
    compressed = Schedules(
        Config.from_dict({"run.epochs": 300, "run.max_epochs": 30, "run.fidelity": "compress", **kd}), 7
    )
    got = [compressed.gamma(0, e, 0.0) for e in range(30)]
    want = [full.gamma(0, 10 * e, 0.0) for e in range(30)]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert max(want) > 0.9 and min(want) < 0.1  # the switch happens inside the run


def test_non_finite_loss_ends_the_trial_with_a_clear_error(prepared_tiny):
    cfg, prep = prepared_tiny
    broken = dataclasses.replace(prep, teacher_logits=torch.full_like(prep.teacher_logits, float("nan")))
    with pytest.raises(TrialFailure, match="non-finite training loss at epoch 1"):
        fit(cfg, prepared=broken)


def test_prepared_mismatch_is_refused(prepared_tiny):
    cfg, prep = prepared_tiny
    with pytest.raises(UserError, match="does not match"):
        fit(cfg.replace(**{"data.timesteps": 4}), prepared=prep)


@pytest.mark.slow
def test_default_training_on_digits_dvs_is_far_above_chance(tmp_path):
    cfg = Config.from_dict({"data.cache_dir": str(tmp_path / "cache"), "run.epochs": 3, "run.device": "cpu"})
    result = fit(cfg)
    assert result.teacher_test_acc is not None and result.teacher_test_acc > 0.8
    assert result.best_test_acc > 0.5  # chance is 0.1


def test_a_checkpoint_from_the_other_device_type_resumes_with_a_warning(prepared_tiny, tmp_path, caplog):
    from ckd_search.checkpoint import load_checkpoint

    cfg, prep = prepared_tiny
    fit(cfg.replace(**{"run.epochs": 1}), prepared=prep, checkpoint_dir=tmp_path)
    state = load_checkpoint(tmp_path)
    state["dev_gen"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state (seed, offset)
    trainer = Trainer(cfg.replace(**{"run.epochs": 1}), prep, torch.device("cpu"))
    with caplog.at_level(logging.WARNING, logger="ckd_search.engine"):
        trainer.load_state(state)
    assert trainer.epoch == 1 and "not bit-identical" in caplog.text


def test_the_epochs_lr_reaches_adamw_and_decay_skips_rank_one_parameters(prepared_tiny):
    cfg, prep = prepared_tiny
    cfg = cfg.replace(**{"optim.warmup_epochs": 2, "optim.weight_decay": 0.05})
    trainer = Trainer(cfg, prep, torch.device("cpu"))
    trainer.epoch = 1  # mid warm-up: neither optim.lr (AdamW's initial value) nor warmup_lr
    trainer.train_epoch()
    lr = trainer.schedules.lr(1)
    assert cfg.optim.warmup_lr < lr < cfg.optim.lr
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [lr, lr]
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert any(p is trainer.model.theta for p in no_decay["params"])  # theta and BatchNorm: no decay


def test_evaluation_and_checkpoints_follow_their_periods_and_the_last_epoch(prepared_tiny, tmp_path):
    cfg, prep = prepared_tiny
    seen: list[tuple[int, bool, bool]] = []

    def record(metrics, written):
        seen.append((int(metrics["epoch"]), "test_acc" in metrics, written is not None))

    cfg = cfg.replace(**{"run.epochs": 3, "run.eval_every": 2, "run.checkpoint_every": 2})
    result = fit(cfg, record, prepared=prep, checkpoint_dir=tmp_path)
    assert seen == [(1, False, False), (2, True, True), (3, True, True)]
    assert result.metrics[0]["best_test_acc"] == 0.0 and result.metrics[2]["best_test_acc"] > 0


def test_the_default_switch_is_half_the_run_in_either_unit(prepared_tiny):
    from ckd_search.engine import Schedules

    cfg, _ = prepared_tiny
    cfg = cfg.replace(**{"run.epochs": 10, "kd.e_th": None})
    assert Schedules(cfg, iters_per_epoch=7).switch_point() == 5
    assert Schedules(cfg.replace(**{"kd.units": "iteration"}), iters_per_epoch=7).switch_point() == 35


def _mask_in_a_step(trainer, p: float) -> torch.Tensor:
    from ckd_search.step import ckd_losses as real_loss

    seen = {}

    def spy(model, inputs, config):
        seen["mask"] = inputs.replace_mask.clone()
        return real_loss(model, inputs, config)

    trainer.loss_fn = spy
    batch = next(iter(trainer.train_source))
    trainer.step(batch.frames, batch.labels, batch.index, torch.tensor(p), torch.tensor(1.0))
    assert seen["mask"].shape == batch.labels.shape and seen["mask"].dtype == torch.bool
    return seen["mask"]


def test_p_replace_zero_replaces_no_sample_and_one_replaces_every_sample(prepared_tiny):
    cfg, prep = prepared_tiny
    trainer = Trainer(cfg, prep, torch.device("cpu"))
    for _ in range(2):  # two steps each: not one lucky draw
        assert not bool(_mask_in_a_step(trainer, 0.0).any())
        assert bool(_mask_in_a_step(trainer, 1.0).all())


def _scripted_logits(labels: torch.Tensor, timesteps: int, classes: int, every: int = 2) -> torch.Tensor:
    """[T, B, C] logits whose argmax of the mean over T is the label for every ``every``-th position in
    the batch only (0, every, ...), and whose last step alone points at another class for every sample."""
    b = labels.numel()
    wrong = (labels + 1) % classes
    mean_pick = torch.where(torch.arange(b) % every == 0, labels, (labels + 2) % classes)
    logits = torch.zeros(timesteps, b, classes)
    logits[:-1, torch.arange(b), mean_pick] = 10.0  # dominates the mean over T
    logits[-1, torch.arange(b), wrong] = 1.0  # the last step alone: wrong for every sample
    return logits


def test_evaluation_scores_the_dvs_heads_logits_averaged_over_time(prepared_tiny, monkeypatch):
    cfg, prep = prepared_tiny
    trainer = Trainer(cfg, prep, torch.device("cpu"))
    student = trainer.model.student
    test_labels = prep.data.test.labels
    timesteps, classes = prep.data.timesteps, prep.data.num_classes
    assert classes >= 3 and timesteps >= 2
    done = {"n": 0, "heads": []}

    def scripted_forward(x, head="dvs"):
        from ckd_search.models.snn import StudentOutput

        b = x.shape[1]
        labels = test_labels[done["n"] : done["n"] + b]  # the test source runs in order
        done["n"] += b
        done["heads"].append(head)
        if head == "dvs":
            logits = _scripted_logits(labels, timesteps, classes)
        else:  # any other head: wrong on every step
            wrong = torch.nn.functional.one_hot((labels + 1) % classes, classes).float()
            logits = wrong.expand(timesteps, -1, -1)
        return StudentOutput(logits=logits, membrane=torch.zeros(timesteps, b, 1), firing=None)

    monkeypatch.setattr(student, "forward", scripted_forward)
    metrics = trainer.evaluate()
    n = len(test_labels)
    assert done["n"] == n and set(done["heads"]) == {"dvs"}
    assert n > 1
    # even positions of each batch are right: hand count over the test source's batches
    batch = trainer.test_source.batch_size
    expected = sum((min(batch, n - s) + 1) // 2 for s in range(0, n, batch)) / n
    assert metrics["test_acc"] == expected


def test_an_epochs_train_loss_and_accuracy_are_the_means_over_its_steps(prepared_tiny):
    cfg, prep = prepared_tiny
    trainer = Trainer(cfg, prep, torch.device("cpu"))
    real_step = trainer.step
    steps: list[tuple[dict[str, torch.Tensor], torch.Tensor]] = []
    timesteps, classes = prep.data.timesteps, prep.data.num_classes

    def recording_step(frames, labels, index, p, gamma):
        parts = real_step(frames, labels, index, p, gamma)
        # scripted DVS logits: right (on the mean over T) for every third sample of the batch only
        parts["dvs_logits"] = _scripted_logits(labels, timesteps, classes, every=3)
        steps.append(({k: v.detach().clone() for k, v in parts.items()}, labels.clone()))
        return parts

    trainer.step = recording_step
    metrics = trainer.train_epoch()
    assert len(steps) == len(trainer.train_source) >= 2
    losses = [float(parts["loss"]) for parts, _ in steps]
    assert metrics["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-6)
    for key in ("loss_cls_s", "loss_cls_e", "loss_kd", "loss_da"):
        assert metrics[key] == pytest.approx(sum(float(p[key]) for p, _ in steps) / len(steps), rel=1e-6)
    cka = torch.stack([p["cka"] for p, _ in steps]).mean(0)
    for t in range(timesteps):
        assert metrics[f"cka_t{t}"] == pytest.approx(float(cka[t]), rel=1e-5, abs=1e-7)
    seen = sum(labels.numel() for _, labels in steps)
    right = sum((labels.numel() + 2) // 3 for _, labels in steps)
    assert metrics["train_acc"] == right / seen
    assert 0 < metrics["train_acc"] < 1 and metrics["train_acc"] != 0.5  # 1 - acc would differ
