"""BatchNorm running statistics: averaged across ranks (needed when BN is not synchronised), and kept or
averaged across the micro-batches of an accumulated step.

Without SyncBN every rank's running mean/var drift apart; a checkpoint or export taken from rank 0
alone would silently keep rank 0's. ``average_bn_stats`` makes all ranks hold the mean. Gradient
accumulation treats a micro-batch like a rank: each micro-batch updates the statistics from the step's
start (:func:`bn_state` / :func:`load_bn_state`), and the step ends on their mean (:func:`add_bn_state`),
which is what averaging the ranks' exponential averages gives (they are linear in the batch statistics).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bigseer.distributed import all_reduce_mean, get_world_size


def bn_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """All BatchNorm modules (incl. ``GroupSyncBatchNorm``) that track running statistics."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and m.running_mean is not None]


@torch.no_grad()
def average_bn_stats(model: nn.Module, group: Any = None) -> int:
    """All-reduce-mean ``running_mean`` and ``running_var`` of every BN in ``model`` (in place).

    One collective for all of them. Returns the number of BN modules averaged (0 with one process).
    """
    mods = bn_modules(model)
    if not mods or get_world_size(group) == 1:
        return 0
    flat = torch.cat([torch.cat([m.running_mean.float().flatten(), m.running_var.float().flatten()])
                      for m in mods])
    flat = all_reduce_mean(flat, group)
    offset = 0
    for m in mods:
        for buf in (m.running_mean, m.running_var):
            n = buf.numel()
            buf.copy_(flat[offset:offset + n].view_as(buf).to(buf.dtype))
            offset += n
    return len(mods)


def bn_state(model: nn.Module) -> list[torch.Tensor]:
    """Copies of every BN's ``running_mean``, ``running_var`` and ``num_batches_tracked`` (in that order)."""
    out = []
    for m in bn_modules(model):
        out += [m.running_mean.clone(), m.running_var.clone()]
        out += [m.num_batches_tracked.clone()] if m.num_batches_tracked is not None else []
    return out


@torch.no_grad()
def load_bn_state(model: nn.Module, state: list[torch.Tensor]) -> None:
    """Write a :func:`bn_state` back (in place)."""
    bufs = [b for m in bn_modules(model) for b in (m.running_mean, m.running_var, m.num_batches_tracked)
            if b is not None]
    for buf, value in zip(bufs, state, strict=True):
        buf.copy_(value)


def add_bn_state(total: list[torch.Tensor] | None, state: list[torch.Tensor]) -> list[torch.Tensor]:
    """``total + state`` for the statistics of two :func:`bn_state` (integer counters: ``state``'s)."""
    if total is None:
        return state
    return [t + s if s.is_floating_point() else s for t, s in zip(total, state, strict=True)]


def scaled_bn_state(total: list[torch.Tensor], count: int) -> list[torch.Tensor]:
    """The mean of ``count`` states summed by :func:`add_bn_state`."""
    return [t / count if t.is_floating_point() else t for t in total]
