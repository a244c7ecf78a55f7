"""Average BatchNorm running statistics across ranks (needed when BN is not synchronised).

Without SyncBN every rank's running mean/var drift apart; a checkpoint or export taken from rank 0
alone would silently keep rank 0's. ``average_bn_stats`` makes all ranks hold the mean.
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
