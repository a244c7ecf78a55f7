"""What a resumed run trains with: the checkpoint's run, on this run's ranks (any number), with one-line
errors for what cannot continue.

Batch semantics (docs/DESIGN-scale.md section 5): the global batch ``G`` of the checkpoint is kept unless
``--batch_size`` asks for another per-rank batch than the checkpoint's; then ``G`` changes, the peak LR
follows the linear rule (base_lr x G / 256) and a log line says so. The SwAV queue keeps its global size
(per rank: ``queue_length x N / M``) when ``G`` is kept, and starts empty otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from bigseer.config import PretrainConfig
from bigseer.errors import CheckpointError, ConfigError

log = logging.getLogger("bigseer")

# Fields that define the model, its loss or the sample order: a checkpoint continues only with the same.
MUST_MATCH = ("model", "crops", "head_dims", "embed_dim", "num_prototypes", "crops_for_assign", "seed")


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, (tuple, list)) else v


def check_compatible(cfg: PretrainConfig, saved: dict[str, Any], where: str) -> None:
    """CheckpointError naming the first field this run changes that a checkpoint cannot continue with."""
    for name in MUST_MATCH:
        if name in saved and _norm(getattr(cfg, name)) != _norm(saved[name]):
            raise CheckpointError(f"cannot resume {where}: it trains {name}={saved[name]!r}, this run asks "
                                  f"{name}={getattr(cfg, name)!r} (start a new run in another output_dir, or "
                                  f"drop the flag)")


def divisors_note(total: int, limit: int = 12) -> str:
    ds = [d for d in range(1, total + 1) if total % d == 0][:limit]
    return ", ".join(map(str, ds)) + (", ..." if len(ds) == limit else "")


def plan_resume(cfg: PretrainConfig, meta: dict[str, Any], trainer: dict[str, Any], world: int,
                where: str) -> tuple[PretrainConfig, bool]:
    """``cfg`` adjusted to continue the checkpoint described by ``meta`` / ``trainer`` on ``world`` ranks, and
    whether the per-rank layout changed (then a DeepSpeed JSON's batch fields describe the old run's)."""
    from bigseer.optim.schedules import linear_scaled_lr

    saved = meta.get("config", {})
    check_compatible(cfg, saved, where)
    from bigseer.config import accumulate_of

    old_world = int(meta.get("world_size", 1))
    old_lanes = old_world * int(saved.get("accumulate") or 1)  # a micro-batch counts like a rank
    acc = accumulate_of(cfg)
    lanes = world * acc
    old_batch = int(saved.get("batch_size") or 1)
    global_batch = int(trainer.get("global_batch", old_batch * old_lanes))
    changes: dict[str, Any] = {}
    if cfg.batch_size is None or cfg.batch_size == old_batch:
        if global_batch % lanes:
            raise ConfigError(f"cannot resume {where} on {world} ranks x accumulate {acc}: its global batch "
                              f"{global_batch} is not divisible by {lanes}; ranks x accumulate that keep it: "
                              f"{divisors_note(global_batch)} (or give --batch_size to change the global batch)")
        batch = global_batch // lanes
        keep_global = True
    else:
        batch = cfg.batch_size
        keep_global = batch * lanes == global_batch
        if not keep_global:
            log.info("resume: global batch %d -> %d (--batch_size %d on %d ranks x accumulate %d); peak lr follows "
                     "the linear rule: %.4g -> %.4g", global_batch, batch * lanes, batch, world, acc,
                     linear_scaled_lr(cfg.base_lr, global_batch), linear_scaled_lr(cfg.base_lr, batch * lanes))
    changes["batch_size"] = batch
    old_queue = int(saved.get("queue_length", 0) or 0)
    if old_queue and cfg.queue_length in (0, old_queue) and keep_global:
        changes["queue_length"] = old_queue * old_lanes // lanes  # the same global queue, re-split
    elif old_queue and cfg.queue_length == old_queue:
        log.info("resume: the global batch changed, so the SwAV queue starts empty")
    if lanes != old_lanes:
        log.info("resume: %d -> %d lanes (ranks x micro-batches: %d x %d), global batch %d kept: %d per micro-batch%s",
                 old_lanes, lanes, world, acc, global_batch, batch,
                 f", queue {changes['queue_length']} per micro-batch" if "queue_length" in changes else "")
    return replace(cfg, **changes), batch != old_batch or lanes != old_lanes
