"""Collapse detection for SwAV pretraining: recognise the trivial fixed point and say what to change.

SwAV's trivial solution: the trunk gives (nearly) the same embedding for every image, Sinkhorn then spreads
every sample uniformly over the K prototypes, and the swapped prediction is the uniform distribution, so the
loss sits at exactly ln K and its gradient vanishes. Seen through :class:`bigseer.ssl.stats.SwAVStats`:

- ``loss_ratio`` (loss / ln K) within ``loss_tol`` of 1, and
- codes about uniform (``code_entropy / ln K >= code_uniform``) or few prototypes winning the argmax
  (``prototypes_used <= max_used``), or
- embeddings collapsed (``embed_std_ratio < embed_tol``) whatever the loss.

:class:`CollapseDetector` is fed the stats of every step (a dict from ``SwAVStats.as_dict()``, identical on
all ranks), and once the condition has held for ``patience`` consecutive steps it produces ONE warning line
naming the likely causes *for this run's configuration* and the flags to change (:func:`likely_causes`).
With ``on_collapse="stop"`` it raises :class:`CollapseError` instead (after the same line), carrying the last
step before the collapse began so the caller can keep the last good checkpoint. Pure Python, no collectives:
every rank takes the same decision from the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from bigseer.errors import BigseerError, ConfigError

ON_COLLAPSE = ("warn", "stop", "off")


class CollapseError(BigseerError, RuntimeError):
    """Pretraining fell into SwAV's trivial fixed point and ``on_collapse="stop"`` was asked for.

    ``step``: the step at which it was detected; ``since_step``: first step of the collapsed streak;
    ``last_healthy_step``: the last step before it (0 = never healthy): checkpoints up to this step are good.
    """

    def __init__(self, message: str, step: int, since_step: int, last_healthy_step: int) -> None:
        super().__init__(message)
        self.step, self.since_step, self.last_healthy_step = step, since_step, last_healthy_step


def _crop_groups(crops: Any) -> list[Any]:
    from bigseer.data.multicrop import parse_crops

    try:
        return parse_crops(crops)
    except Exception:  # an unparsable spec is the config's problem, not the detector's
        return []


def likely_causes(cfg: Mapping[str, Any], median_side: float | None = None,
                  world_size: int = 1) -> list[tuple[str, str]]:
    """``(cause, flags to change)`` for a collapsed run with PretrainConfig fields ``cfg`` (a dict), most
    likely first. ``median_side``: the data's median shorter side in px, if known."""
    from bigseer.recipe import auto_recipe, recipe_flags

    groups = _crop_groups(cfg.get("crops", ""))
    large = groups[0].size if groups else None
    smallest = min((g.size for g in groups), default=None)
    side = median_side if median_side else large
    causes: list[tuple[str, str]] = []
    aug_keys = ("crops", "flip_p", "jitter_strength", "grayscale_p", "blur_p", "crop_ratio")
    strong = bool(groups) and (groups[0].scale[0] < 0.5 or float(cfg.get("jitter_strength", 1.0)) > 0.5
                               or float(cfg.get("blur_p", 0.5)) > 0 or float(cfg.get("grayscale_p", 0.2)) > 0
                               or (smallest is not None and smallest < 32))
    if side is not None and side < 96 and strong:
        auto = auto_recipe(side, 10_000).overrides
        what = f"{median_side:g} px images" if median_side else f"{large} px crops"
        causes.append((f"augmentation too strong for {what} (crops {cfg.get('crops')}, colour jitter "
                       f"{cfg.get('jitter_strength')}, blur {cfg.get('blur_p')}): the two views share too "
                       "little for a randomly initialised trunk",
                       "--recipe auto, or " + recipe_flags({k: auto[k] for k in aug_keys})))
    if median_side and large and large > 1.5 * median_side:
        causes.append((f"crops of {large} px upsample {median_side:g} px images",
                       f"--crops {auto_recipe(median_side, 10_000).overrides['crops']}"))
    if cfg.get("zero_init_last", True) and large is not None and large < 128:
        causes.append((f"zero-init of each block's last BN at {large} px: the trunk starts as strided 1x1 "
                       "shortcuts reading a few corner pixels", "--no_zero_init_last"))
    base_lr = float(cfg.get("base_lr", 0.3))
    small_lr = auto_recipe(side, 10_000).overrides.get("base_lr") if side is not None and side < 96 else None
    if small_lr is not None and base_lr < small_lr / 2:
        causes.append((f"learning rate base_lr={base_lr:g} too low for the trunk to leave the early plateau at "
                       f"ln K on small images", f"--base_lr {small_lr:g}"))
    elif base_lr > 4 * (small_lr or 0.3):
        causes.append((f"learning rate base_lr={base_lr:g} is high (SEER: 0.3 per 256 images"
                       + (f", small-image recipe: {small_lr:g}" if small_lr else "") + ")",
                       f"--base_lr {small_lr or 0.3:g}"))
    eps = float(cfg.get("epsilon", 0.05))
    if eps < 0.03:
        causes.append((f"Sinkhorn epsilon={eps:g} is small (codes collapse to hard, unbalanced assignments)",
                       "--epsilon 0.05"))
    queue = int(cfg.get("queue_length", 0) or 0)
    if queue:
        causes.append((f"the queue (queue_length={queue}) feeds Sinkhorn stale embeddings once full",
                       "--queue_length 0 (or start it later / --freeze_prototypes_iters)"))
    k, batch = int(cfg.get("num_prototypes", 0) or 0), int(cfg.get("batch_size") or 0) * max(world_size, 1)
    if batch and k > 2 * batch:
        causes.append((f"K={k} prototypes for a global batch of {batch} (equipartition over few samples)",
                       f"--num_prototypes {max(32, 16 * round(batch / 16))}"))
    if not causes:
        causes.append(("no obvious setting; usual suspects: lr, epsilon, augmentation strength",
                       "--base_lr (lower), --epsilon 0.05, --recipe auto"))
    return causes


@dataclass
class CollapseDetector:
    """Streak detector for SwAV's trivial fixed point (see the module docstring).

    Feed :meth:`update` every step; it returns the warning line once (then None), or raises
    :class:`CollapseError` when ``on_collapse="stop"``. ``context``: PretrainConfig fields as a dict (for
    :func:`likely_causes`); ``median_side``: the data's median shorter side if known.
    """

    patience: int = 300
    on_collapse: str = "warn"
    loss_tol: float = 0.01
    code_uniform: float = 0.95
    max_used: int = 2
    embed_tol: float = 0.02
    context: dict[str, Any] = field(default_factory=dict)
    median_side: float | None = None
    world_size: int = 1
    streak: int = 0
    since_step: int = 0
    last_healthy_step: int = 0
    fired: bool = False

    def __post_init__(self) -> None:
        if self.on_collapse not in ON_COLLAPSE:
            raise ConfigError(f"on_collapse={self.on_collapse!r} is invalid: must be one of {', '.join(ON_COLLAPSE)}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1:
            raise ConfigError(f"collapse_patience={self.patience!r} is invalid: must be an integer >= 1 (steps)")
        for name in ("loss_tol", "code_uniform", "embed_tol"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ConfigError(f"collapse detector {name}={v!r} must be in [0, 1]")

    @classmethod
    def for_config(cls, cfg: Mapping[str, Any], median_side: float | None = None, world_size: int = 1,
                   **kw: Any) -> "CollapseDetector":
        """A detector for a run of PretrainConfig ``cfg`` (``cfg.to_dict()``); ``on_collapse`` and
        ``collapse_patience`` are read from ``cfg`` when present, ``kw`` overrides anything."""
        opts: dict[str, Any] = {}
        if "on_collapse" in cfg:
            opts["on_collapse"] = cfg["on_collapse"]
        if "collapse_patience" in cfg:
            opts["patience"] = cfg["collapse_patience"]
        opts.update(kw)
        return cls(context=dict(cfg), median_side=median_side, world_size=world_size, **opts)

    def is_trivial(self, stats: Mapping[str, float]) -> bool:
        """Whether one step's stats look like the trivial fixed point."""
        log_k = math.log(stats["num_prototypes"]) if stats["num_prototypes"] > 1 else 1.0
        pinned = abs(stats["loss_ratio"] - 1.0) <= self.loss_tol
        uniform = stats["code_entropy"] / log_k >= self.code_uniform
        few = stats["prototypes_used"] <= self.max_used
        return (pinned and (uniform or few)) or stats["embed_std_ratio"] < self.embed_tol

    def update(self, step: int, stats: Mapping[str, float]) -> str | None:
        """Record step ``step``'s stats; the warning line when the collapse is first confirmed, else None."""
        if self.on_collapse == "off":
            return None
        if not self.is_trivial(stats):
            self.streak, self.last_healthy_step = 0, step
            return None
        if self.streak == 0:
            self.since_step = step
        self.streak += 1
        if self.streak < self.patience or self.fired:
            return None
        self.fired = True
        line = self.message(step, stats)
        if self.on_collapse == "stop":
            raise CollapseError(line, step, self.since_step, self.last_healthy_step)
        return line

    def message(self, step: int, stats: Mapping[str, float]) -> str:
        """The one-line diagnosis."""
        k = int(stats["num_prototypes"])
        log_k = math.log(k) if k > 1 else 1.0
        causes = likely_causes(self.context, self.median_side, self.world_size)
        why = "; ".join(f"({i}) {c} -> {f}" for i, (c, f) in enumerate(causes, 1))
        action = ("stopping (on_collapse=stop); checkpoints up to step "
                  f"{self.last_healthy_step} are from before the collapse" if self.on_collapse == "stop"
                  else "training continues (on_collapse=warn; 'stop' ends the run)")
        return (f"SwAV collapsed: steps {self.since_step}-{step} sit at the trivial fixed point (loss "
                f"{stats['loss']:.4f} = {stats['loss_ratio']:.3f} x ln K, code entropy "
                f"{stats['code_entropy'] / log_k:.2f} x ln K, {int(stats['prototypes_used'])}/{k} prototypes in "
                f"use, embedding spread {stats['embed_std_ratio']:.3f}); likely causes: {why}; {action}")

    def state_dict(self) -> dict[str, Any]:
        """The streak state (for checkpoints, so a resumed run keeps counting)."""
        return {"streak": self.streak, "since_step": self.since_step, "last_healthy_step": self.last_healthy_step,
                "fired": self.fired}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key in ("streak", "since_step", "last_healthy_step", "fired"):
            if key in state:
                setattr(self, key, type(getattr(self, key))(state[key]))
