"""Closed-form checks of the schedules."""

import math

import pytest

from ckd_search import schedules as s


def test_replace_probability_endpoints_and_exponent():
    assert s.replace_probability(0, 0, 10, 300) == 0.0
    assert s.replace_probability(0, 300, 10, 300) == 1.0
    assert s.replace_probability(5, 299, 10, 300) < 1.0
    # P = (e/E)^3 at epoch boundaries (ckd-method.md 2.2)
    assert s.replace_probability(0, 150, 10, 300) == pytest.approx(0.125)
    assert s.replace_probability(0, 200, 10, 300) == pytest.approx((2 / 3) ** 3)
    assert s.replace_probability(0, 150, 10, 300, power=1) == pytest.approx(0.5)
    assert s.replace_probability(0, 400, 10, 300) == 1.0  # clamped


def test_replace_probability_is_monotone():
    values = [s.replace_probability(i, e, 7, 20) for e in range(20) for i in range(7)]
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_step_replacement_is_zero_then_one():
    # ckd-method.md 2.2: P = 0 for e <= E/2 (0-based), 1 afterwards, whatever the batch index
    assert s.step_replace_probability(4, 10) == 0.0
    assert s.step_replace_probability(5, 10) == 0.0
    assert s.step_replace_probability(6, 10) == 1.0
    assert [s.replacement("step", i, 5, 10, 10) for i in range(10)] == [0.0] * 10
    assert s.replacement("step", 0, 6, 10, 10) == 1.0
    assert s.replacement("none", 9, 9, 10, 10) == 0.0
    assert s.replacement("sliding", 5, 5, 10, 10, 3.0) == s.replace_probability(5, 5, 10, 10, 3.0)


def test_gamma_is_half_at_switch_point_and_decreasing():
    assert s.kd_switch_weight(150, 150, 100) == 0.5
    assert s.kd_switch_weight(90, 90, 0.001) == 0.5
    values = [s.kd_switch_weight(e, 10, 0.7) for e in range(30)]
    assert all(a > b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("k", [1e3, 1e4, 1e9])
def test_gamma_stable_for_huge_k(k):
    assert s.kd_switch_weight(0, 150, k) == 1.0
    assert s.kd_switch_weight(300, 150, k) == 0.0
    assert math.isfinite(s.kd_switch_weight(150.0001, 150, k))


def test_gamma_slow_switch_is_nearly_flat_in_epochs():
    # k = 0.001, e_th = 90 over 200 epochs stays ~0.5 (the caveat of ckd-method.md 2.6)
    assert s.kd_switch_weight(0, 90, 0.001) == pytest.approx(0.5225, abs=1e-4)
    assert s.kd_switch_weight(200, 90, 0.001) == pytest.approx(0.4725, abs=1e-4)


def test_adaptive_weight_follows_replacement():
    assert s.adaptive_kd_weight(0.5, 0.5, 10) == 0.5
    assert s.adaptive_kd_weight(0.0, 0.5, 10) > 0.99
    assert s.adaptive_kd_weight(1.0, 0.5, 10) < 0.01


def test_lr_warmup_cosine_and_floor():
    kw = dict(base_lr=1e-3, total_epochs=100, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5)
    assert s.lr_at(0, **kw) == pytest.approx(1e-6)
    assert s.lr_at(4, **kw) == pytest.approx(1e-6 + 4 * (1e-3 - 1e-6) / 5)
    assert s.lr_at(50, **kw) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5), rel=1e-9)
    assert s.lr_at(100, **kw) == pytest.approx(1e-5)
    values = [s.lr_at(e, **kw) for e in range(5, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_stable_sigmoid_matches_math():
    for z in (-50.0, -1.0, 0.0, 2.5, 700.0, -800.0):
        assert s.stable_sigmoid(z) == pytest.approx(1 / (1 + math.exp(-z)) if z > -700 else 0.0)


@pytest.mark.parametrize(
    ("fidelity", "budget", "warmup", "expected"),
    [("compress", 30, 5, 1), ("compress", 150, 10, 5), ("compress", 30, 0, 0), ("truncate", 30, 5, 5)],
)
def test_compress_scales_the_warm_up_with_the_other_schedules(fidelity, budget, warmup, expected):
    from ckd_search.config import Config

    cfg = Config.from_dict(
        {"run.epochs": 300, "run.max_epochs": budget, "run.fidelity": fidelity, "optim.warmup_epochs": warmup}
    )
    sched = s.Schedules(cfg, iters_per_epoch=7)
    assert sched.warmup_epochs == expected
    if expected:  # the warm-up ends where the scaled count says: the base LR one epoch later
        assert sched.lr(expected - 1) < sched.lr(expected) == pytest.approx(_cosine_lr(cfg, sched, expected))


def test_gamma_at_the_switch_point_is_a_half_even_for_an_infinite_k():
    # k (e - e_th) was inf * 0 = NaN there, and the run failed with NaN losses
    assert s.kd_switch_weight(1, 1, math.inf) == 0.5
    assert s.kd_switch_weight(2, 1, math.inf) == 0.0 and s.kd_switch_weight(0, 1, math.inf) == 1.0
    assert s.adaptive_kd_weight(0.5, 0.5, math.inf) == 0.5


def test_switch_steepness_does_not_overflow_for_a_long_planned_run():
    from ckd_search.config import Config

    cfg = Config.from_dict({"kd.k": 1e4, "kd.e_th": 1, "run.epochs": 10**306})
    sched = s.Schedules(cfg, iters_per_epoch=7)
    assert sched.switch_steepness() == 1e4  # was k * epochs = inf first, then / span
    assert sched.gamma(0, 1, 0.0) == 0.5 and sched.gamma(0, 2, 0.0) == 0.0


@pytest.mark.parametrize(
    ("epochs", "budget", "warmup", "expected"),
    [(300, 1, 5, 0), (10, 4, 9, 3), (10, 1, 9, 0), (2, 1, 1, 0), (10, 2, 9, 1), (4, 8, 3, 6)],
)
def test_compress_always_leaves_an_epoch_after_the_warm_up(epochs, budget, warmup, expected):
    from ckd_search.config import Config

    cfg = Config.from_dict(
        {
            "run.epochs": epochs,
            "run.max_epochs": budget,
            "run.fidelity": "compress",
            "optim.warmup_epochs": warmup,
        }
    )
    sched = s.Schedules(cfg, iters_per_epoch=7)
    assert sched.warmup_epochs == expected < sched.span
    last = sched.span - 1  # the last epoch of the trial trains past the warm-up, not at warmup_lr
    assert sched.lr(last) > cfg.optim.warmup_lr
    assert sched.lr(last) == pytest.approx(_cosine_lr(cfg, sched, last))


def _cosine_lr(cfg, sched, epoch):
    """The scheduled rate at ``epoch`` of the span without any warm-up."""
    return s.lr_at(
        epoch,
        base_lr=cfg.optim.lr,
        total_epochs=sched.span,
        warmup_epochs=0,
        warmup_lr=0.0,
        min_lr=cfg.optim.min_lr,
    )


def _gamma_schedules(iters_per_epoch: int = 7, **kd):
    from ckd_search.config import Config

    return s.Schedules(Config.from_dict({"run.epochs": 10, **kd}), iters_per_epoch=iters_per_epoch)


def test_constant_kd_schedule_keeps_gamma_at_one():
    sched = _gamma_schedules(**{"kd.schedule": "constant", "kd.e_th": 2.0, "kd.k": 100.0})
    # past the (ignored) switch point too, and whatever P_replace is
    assert [sched.gamma(it, e, p) for it, e, p in ((0, 0, 0.0), (3, 5, 0.4), (6, 9, 1.0))] == [1.0] * 3


def test_adaptive_kd_schedule_follows_p_replace_not_its_complement():
    sched = _gamma_schedules(**{"kd.schedule": "adaptive", "kd.p_th": 0.5, "kd.k": 10.0})
    for p in (0.1, 0.3, 0.9):
        got = sched.gamma(2, 4, p)
        assert got == s.adaptive_kd_weight(p, 0.5, 10.0)
        assert got != pytest.approx(s.adaptive_kd_weight(1.0 - p, 0.5, 10.0))
    assert sched.gamma(0, 0, 0.1) > 0.9 and sched.gamma(0, 0, 0.9) < 0.1  # KD fades as P grows


def test_iteration_units_count_the_batch_inside_the_epoch():
    n = 7
    sched = _gamma_schedules(n, **{"kd.units": "iteration", "kd.e_th": 10.0, "kd.k": 0.5})
    for epoch, it in ((0, 0), (1, 0), (1, 3), (1, 6), (2, 5)):
        assert sched.gamma(it, epoch, 0.0) == s.kd_switch_weight(epoch * n + it, 10.0, 0.5)
    within = [sched.gamma(it, 1, 0.0) for it in range(n)]  # e = 7..13 crosses e_th = 10
    assert all(a > b for a, b in zip(within, within[1:]))
    assert within[3] == 0.5
