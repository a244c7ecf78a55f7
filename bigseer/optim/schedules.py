"""Learning-rate schedules as SEER ran them.

- ``WarmupCosine``: linear warmup from ``start_lr`` to ``peak_lr`` over ``warmup_steps``, then a
  half-cosine from ``peak_lr`` to ``final_lr`` at ``total_steps`` (SEER RG256: 0.15 -> 9.6 over 8K
  steps at batch 8192, final = peak/1000). ``seer_warmup_cosine(batch_size, ...)`` builds it from
  the paper's rule peak = 0.3 x batch / 256.
- ``PlateauHalving``: the paper's online schedule: a fixed LR halved when the (smoothed) loss has not
  decreased for ``patience`` checks. Stateful; ``state_dict``/``load_state_dict`` for resume.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from bigseer.errors import ConfigError


@dataclass(frozen=True)
class WarmupCosine:
    """``lr(step)`` for step = 0, 1, ...: linear warmup then half-cosine; constant ``final_lr`` after the end."""

    start_lr: float
    peak_lr: float
    warmup_steps: int
    total_steps: int
    final_lr: float

    def __post_init__(self) -> None:
        if not (isinstance(self.warmup_steps, int) and isinstance(self.total_steps, int)
                and 0 <= self.warmup_steps <= self.total_steps and self.total_steps > 0):
            raise ConfigError(f"WarmupCosine needs integers 0 <= warmup_steps ({self.warmup_steps}) <= "
                              f"total_steps ({self.total_steps}), total_steps > 0")
        if min(self.start_lr, self.peak_lr, self.final_lr) < 0:
            raise ConfigError("WarmupCosine learning rates must be >= 0")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_lr + (self.peak_lr - self.start_lr) * step / self.warmup_steps
        decay = self.total_steps - self.warmup_steps
        if decay == 0 or step >= self.total_steps:
            return self.final_lr if decay else self.peak_lr
        t = (step - self.warmup_steps) / decay
        return self.final_lr + 0.5 * (self.peak_lr - self.final_lr) * (1 + math.cos(math.pi * t))


def linear_scaled_lr(base_lr: float, global_batch: int) -> float:
    """The linear scaling rule (SEER, Goyal et al. 2017): peak lr = ``base_lr * global_batch / 256``. The one
    owner of the rule: the engine's schedule, elastic resume's log and :func:`seer_peak_lr` call it."""
    if global_batch <= 0:
        raise ConfigError(f"batch_size={global_batch} must be positive")
    return base_lr * global_batch / 256


def seer_peak_lr(batch_size: int, base: float = 0.3) -> float:
    """The paper's linear scaling rule: ``base * batch_size / 256``."""
    return linear_scaled_lr(base, batch_size)


def seer_warmup_cosine(batch_size: int, total_steps: int, warmup_steps: int = 8000, start_lr: float = 0.15,
                       final_ratio: float = 1e-3) -> WarmupCosine:
    """SEER's schedule: warmup from ``start_lr`` to ``0.3 * batch/256``, cosine to peak * ``final_ratio``."""
    peak = seer_peak_lr(batch_size)
    return WarmupCosine(start_lr, peak, min(warmup_steps, total_steps), total_steps, peak * final_ratio)


@dataclass
class PlateauHalving:
    """Fixed LR, multiplied by ``factor`` (0.5) when the loss has not improved on the best seen by a
    relative ``threshold`` for ``patience`` consecutive ``update`` calls; never below ``min_lr``."""

    lr: float
    patience: int = 1000
    factor: float = 0.5
    threshold: float = 1e-3
    min_lr: float = 0.0
    best: float = math.inf
    bad_checks: int = 0
    halvings: int = 0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.patience < 1 or not 0 < self.factor < 1:
            raise ConfigError(f"PlateauHalving needs lr > 0, patience >= 1, 0 < factor < 1 "
                              f"(got lr={self.lr}, patience={self.patience}, factor={self.factor})")

    def update(self, loss: float) -> float:
        """Record one loss (e.g. a running mean of the last steps); return the LR to use next."""
        if not math.isfinite(loss):
            return self.lr
        if loss < self.best * (1 - self.threshold):
            self.best = loss
            self.bad_checks = 0
        else:
            self.bad_checks += 1
            if self.bad_checks >= self.patience:
                self.lr = max(self.lr * self.factor, self.min_lr)
                self.halvings += 1
                self.bad_checks = 0
        return self.lr

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


class LRSchedule:
    """A run's LR driver: SEER's warmup + half-cosine (a function of the step; ``start_lr`` None: peak / 64),
    or the paper's fixed-LR-halve-on-plateau (stateful, fed the loss after every logged step)."""

    def __init__(self, peak: float, *, schedule: str = "cosine", start_lr: float | None = None,
                 warmup_steps: int = 0, total_steps: int = 1, final_lr_ratio: float = 1e-3,
                 plateau_patience: int = 1000) -> None:
        self.cosine: WarmupCosine | None = None
        self.plateau: PlateauHalving | None = None
        if schedule == "cosine":
            start = start_lr if start_lr is not None else peak / 64
            self.cosine = WarmupCosine(start, peak, warmup_steps, total_steps, peak * final_lr_ratio)
        elif schedule == "plateau":
            self.plateau = PlateauHalving(lr=peak, patience=plateau_patience)
        else:
            raise ConfigError(f"schedule={schedule!r} is invalid; choose cosine or plateau")

    def lr_at(self, step: int) -> float:
        return self.cosine(step) if self.cosine is not None else self.plateau.lr  # type: ignore[union-attr]

    def observe(self, loss: float) -> None:
        if self.plateau is not None:
            self.plateau.update(loss)

    def state_dict(self) -> dict[str, Any]:
        return self.plateau.state_dict() if self.plateau is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.plateau is not None:
            self.plateau.load_state_dict(state)
