"""Pure schedule functions: replacement probability, KD switch weight, learning rate.

Everything takes plain numbers and returns a float: no optimizer mutation, no globals.
:class:`Schedules` lays them over one run's config, for the engine and the report alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ckd_search.config import Config


def stable_sigmoid(z: float) -> float:
    """sigma(z) without overflow for any finite z (exp of a non-positive number only)."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    ez = math.exp(z)
    return ez / (1.0 + ez)


def training_progress(iteration: int, epoch: int, iters_per_epoch: int, total_epochs: int) -> float:
    """Fraction of the run done before this batch: (i + e N_b) / (E N_b)."""
    return (iteration + epoch * iters_per_epoch) / float(total_epochs * iters_per_epoch)


def replace_probability(
    iteration: int, epoch: int, iters_per_epoch: int, total_epochs: int, power: float = 3.0
) -> float:
    """P_replace(i, e) = min(1, ((i + e N_b) / (E N_b))^p) (He et al., sliding training; p = 3).

    ``iteration`` is the batch index inside the (0-based) ``epoch``.
    """
    progress = training_progress(iteration, epoch, iters_per_epoch, total_epochs)
    return min(1.0, max(progress, 0.0) ** power)


def step_replace_probability(epoch: int, total_epochs: int) -> float:
    """He et al.'s "no sliding training" ablation: P = 0 for (0-based) epochs e <= E/2, 1 afterwards."""
    return 0.0 if epoch <= total_epochs / 2 else 1.0


def replacement(
    mode: str, iteration: int, epoch: int, iters_per_epoch: int, total_epochs: int, power: float = 3.0
) -> float:
    """P_replace of ``loss.replace``: "sliding" (He et al.), "step" (its ablation) or "none" (0)."""
    if mode == "none":
        return 0.0
    if mode == "step":
        return step_replace_probability(epoch, total_epochs)
    return replace_probability(iteration, epoch, iters_per_epoch, total_epochs, power)


def kd_switch_weight(epoch: float, e_th: float, k: float) -> float:
    """gamma(e) = sigma(-k (e - e_th)) = 1 / (1 + exp(k (e - e_th))), CKD's phased KD switch.

    Numerically stable for any k, infinite included (1e3 and beyond give a clean step; 0.5 at e_th,
    where k (e - e_th) would be inf * 0). ``epoch`` and ``e_th`` share a unit: epochs, or iterations
    when the caller passes iteration counts (ckd-method.md 2.6).
    """
    if epoch == e_th:
        return 0.5
    return stable_sigmoid(-k * (epoch - e_th))


def adaptive_kd_weight(p_replace: float, p_th: float, k: float) -> float:
    """gamma = sigma(-k (P_replace - p_th)): KD fades as the hybrid stream turns into DVS.

    A schedule none of the references has: it follows the replacement state instead of the epoch,
    so one (p_th, k) means the same thing at any run length.
    """
    if p_replace == p_th:
        return 0.5
    return stable_sigmoid(-k * (p_replace - p_th))


def lr_at(
    epoch: int,
    *,
    base_lr: float,
    total_epochs: int,
    warmup_epochs: int,
    warmup_lr: float,
    min_lr: float,
) -> float:
    """timm CosineLRScheduler, stepped per epoch (He et al.): linear warm-up, then cosine.

    During warm-up lr = warmup_lr + e (base_lr - warmup_lr) / warmup_epochs; afterwards
    lr = min_lr + (base_lr - min_lr)(1 + cos(pi e / E)) / 2 (timm's default without warmup_prefix).
    """
    if epoch < warmup_epochs:
        return warmup_lr + epoch * (base_lr - warmup_lr) / warmup_epochs
    ratio = min(max(epoch / total_epochs, 0.0), 1.0)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * ratio))


# --- schedules in run units --------------------------------------------------------------------
@dataclass(frozen=True)
class Schedules:
    """P_replace, gamma and LR as functions of (epoch, batch index), laid over ``span`` epochs."""

    cfg: Config
    iters_per_epoch: int

    @property
    def span(self) -> int:
        """Epochs the schedules cover: the planned run (truncate) or the trial's budget (compress)."""
        return self.cfg.run.epochs if self.cfg.run.fidelity == "truncate" else self.budget

    @property
    def budget(self) -> int:
        run = self.cfg.run
        if run.fidelity == "truncate":
            return min(run.max_epochs or run.epochs, run.epochs)
        return run.max_epochs or run.epochs

    def lr(self, epoch: int) -> float:
        o = self.cfg.optim
        return lr_at(
            epoch,
            base_lr=o.lr,
            total_epochs=self.span,
            warmup_epochs=self.warmup_epochs,
            warmup_lr=o.warmup_lr,
            min_lr=o.min_lr,
        )

    @property
    def warmup_epochs(self) -> int:
        """optim.warmup_epochs, scaled to the span under compress like the other schedules (5 of 300
        becomes 1 of 30, not a sixth of the trial); at least 1 where a warm-up was asked for, but
        always short of the span, so the last epoch at least trains at the scheduled rate, not at
        warmup_lr (a 1-epoch span gets no warm-up)."""
        warmup = self.cfg.optim.warmup_epochs
        if warmup and self.span != self.cfg.run.epochs:
            warmup = max(1, round(warmup * self.span / self.cfg.run.epochs))
        return max(0, min(warmup, self.span - 1))

    def p_replace(self, it: int, epoch: int) -> float:
        mode, power = self.cfg.loss.replace, self.cfg.loss.replace_power
        return replacement(mode, it, epoch, self.iters_per_epoch, self.span, power)

    def switch_point(self) -> float:
        """e_th in schedule units (default: half the run), rescaled to the span under compress."""
        kd = self.cfg.kd
        per_epoch = self.iters_per_epoch if kd.units == "iteration" else 1
        e_th = kd.e_th if kd.e_th is not None else self.cfg.run.epochs * per_epoch / 2
        return e_th * self.span / self.cfg.run.epochs

    def switch_steepness(self) -> float:
        """k, steepened by epochs/span under compress: gamma then has the full run's shape over the
        fraction of the run (sigma(-k(e - e_th)) with e and e_th both scaled by span/epochs)."""
        return self.cfg.kd.k * (self.cfg.run.epochs / self.span)  # the ratio first: no k * epochs overflow

    def gamma(self, it: int, epoch: int, p_replace: float) -> float:
        kd = self.cfg.kd
        if kd.schedule == "constant":
            return 1.0
        if kd.schedule == "adaptive":
            return adaptive_kd_weight(p_replace, kd.p_th, kd.k)
        now = epoch * self.iters_per_epoch + it if kd.units == "iteration" else epoch
        return kd_switch_weight(now, self.switch_point(), self.switch_steepness())
