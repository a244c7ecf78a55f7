"""BatchNorm synchronised over process groups of a configurable size, built on plain all-reduce.

``torch.nn.SyncBatchNorm`` refuses CPU tensors, so this one uses ``dist.all_reduce`` only (gloo and
NCCL). Forward: per-channel sum, sum of squares and count are summed over the group, so the output,
the running statistics and the input gradients equal those of one BatchNorm over the group's whole
batch (the gradient of the *sum* of the ranks' losses, as in torch's SyncBatchNorm). Statistics are
computed in fp32 whatever the input dtype (float64 for float64 inputs). ``weight``/``bias`` gradients stay local
(the data-parallel
wrapper averages them). State-dict keys are those of ``nn.BatchNorm2d``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from bigseer.distributed import get_world_size, is_distributed
from bigseer.errors import ConfigError


def _acc(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


def _all_reduce(t: torch.Tensor, group: Any) -> torch.Tensor:
    if group is not None and get_world_size(group) > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


class _SyncBNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                eps: float, group: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xf = _acc(x)
        c = x.shape[1]
        dims = [d for d in range(x.dim()) if d != 1]
        n_local = x.numel() // c
        stats = torch.cat([xf.sum(dims), (xf * xf).sum(dims),
                           torch.tensor([float(n_local)], dtype=xf.dtype, device=x.device)])
        stats = _all_reduce(stats, group)
        count = stats[-1]
        mean = stats[:c] / count
        var = (stats[c:2 * c] / count - mean * mean).clamp_min(0)
        invstd = torch.rsqrt(var + eps)
        shape = [1, c] + [1] * (x.dim() - 2)
        xhat = (xf - mean.view(shape)) * invstd.view(shape)
        y = xhat
        if weight is not None:
            y = y * _acc(weight).view(shape) + _acc(bias).view(shape)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.group = group
        ctx.count = count
        ctx.in_dtype = x.dtype
        unbiased = var * (count / (count - 1).clamp_min(1))
        ctx.mark_non_differentiable(mean, unbiased)
        return y.to(x.dtype), mean, unbiased

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor, _gm: Any, _gv: Any) -> tuple[Any, ...]:
        xhat, invstd, weight = ctx.saved_tensors
        c = xhat.shape[1]
        dims = [d for d in range(xhat.dim()) if d != 1]
        shape = [1, c] + [1] * (xhat.dim() - 2)
        g = gy.to(xhat.dtype)
        sum_g = g.sum(dims)
        sum_gx = (g * xhat).sum(dims)
        gw = sum_gx if weight is not None and ctx.needs_input_grad[1] else None
        gb = sum_g if weight is not None and ctx.needs_input_grad[2] else None
        gx = None
        if ctx.needs_input_grad[0]:
            red = _all_reduce(torch.cat([sum_g, sum_gx]), ctx.group)
            mean_g = red[:c] / ctx.count
            mean_gx = red[c:] / ctx.count
            scale = invstd if weight is None else invstd * _acc(weight)
            gx = ((g - mean_g.view(shape) - xhat * mean_gx.view(shape)) * scale.view(shape)).to(ctx.in_dtype)
        if gw is not None:
            gw = gw.to(weight.dtype)
        if gb is not None:
            gb = gb.to(weight.dtype)
        return gx, gw, gb, None, None


class GroupSyncBatchNorm(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics cover every rank of ``process_group``.

    With ``process_group=None`` and no distributed run it behaves like ``nn.BatchNorm2d`` (fp32 stats).
    """

    def __init__(self, *args: Any, process_group: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:  # eval: running statistics, nothing to synchronise
            return super().forward(x)
        group = self.process_group if is_distributed() else None
        y, mean, unbiased = _SyncBNFunction.apply(x, self.weight, self.bias, self.eps, group)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                self.running_mean.mul_(1 - momentum).add_(mean.to(self.running_mean.dtype), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)
        return y


def make_syncbn_groups(group_size: int) -> Any:
    """Split the default group into consecutive groups of ``group_size`` ranks; return this rank's group.

    Collective over the default group (every rank must call it). Raises ``ConfigError`` when the size
    does not divide the world size, before any collective. Always new groups (never the default group),
    so SyncBN's collectives do not interleave with the data-parallel wrapper's.
    """
    world = get_world_size()
    if not isinstance(group_size, int) or group_size < 1:
        raise ConfigError(f"syncbn_group_size={group_size!r} is invalid: must be a positive integer")
    if world % group_size != 0:
        raise ConfigError(f"syncbn_group_size={group_size} does not divide world_size={world}")
    if not is_distributed() or group_size == 1:
        return None
    rank = dist.get_rank()
    mine = None
    for start in range(0, world, group_size):
        g = dist.new_group(list(range(start, start + group_size)))
        if start <= rank < start + group_size:
            mine = g
    return mine


def convert_syncbn(module: nn.Module, process_group: Any) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` (in place) by ``GroupSyncBatchNorm`` on ``process_group``.

    Parameters, buffers and keys are kept (the same tensors move over). Returns ``module``.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, GroupSyncBatchNorm):
            new = GroupSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats, process_group=process_group)
            if child.affine:
                new.weight = child.weight
                new.bias = child.bias
            if child.track_running_stats:
                new.running_mean = child.running_mean
                new.running_var = child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_syncbn(child, process_group)
    return module
