"""Autograd-aware collectives for the SwAV objective (world size 1: identity, no process group needed).

Gradient convention (SPMD): each rank back-propagates its own loss ``l_r``; the backward of every
collective here sums the incoming gradients over ranks, so the gradient that reaches a rank's local
tensor is the derivative of ``sum_r l_r`` with respect to it.

- ``all_gather_stack``: forward stacks the ranks' tensors ``[W, ...]``; backward all-reduces the
  gradient and keeps this rank's slice (a reduce-scatter; gloo has no reduce-scatter on CPU in all
  versions, so it is an all-reduce + slice).
- ``all_reduce_sum_autograd``: forward sum over ranks; backward sum over ranks.
- ``scale_grad``: identity forward, gradient multiplied by a constant.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from bigseer.distributed import Group, get_rank, get_world_size


class _AllGatherStack(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Group) -> torch.Tensor:
        ctx.group = group
        ctx.rank = get_rank(group)
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(get_world_size(group))]
        dist.all_gather(parts, x, group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank], None


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Group) -> torch.Tensor:
        ctx.group = group
        out = x.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def all_gather_stack(x: torch.Tensor, group: Group = None) -> torch.Tensor:
    """Stack equally shaped tensors from all ranks into ``[W, *x.shape]`` (rank order), differentiably."""
    if get_world_size(group) == 1:
        return x.unsqueeze(0)
    return _AllGatherStack.apply(x, group)


def all_reduce_sum_autograd(x: torch.Tensor, group: Group = None) -> torch.Tensor:
    """Sum over ranks whose backward also sums the gradients over ranks."""
    if get_world_size(group) == 1:
        return x
    return _AllReduceSum.apply(x, group)


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity whose backward multiplies the gradient by ``factor``."""
    if factor == 1.0:
        return x
    return _ScaleGrad.apply(x, factor)
