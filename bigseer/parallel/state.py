"""Checkpoint pieces of a wrapped model and its optimizer (the layouts every backend shares).

:func:`tensor_piece` says where this rank's share of one logical tensor lives: an FSDP2 ``Shard(0)`` DTensor
holds a row block, a ``_bigseer_sharded`` parameter (sharded prototypes) holds rank ``r``'s block of
``K / W`` rows, anything else is replicated (written once, by an owner rank spread by name). Optimizer
state tensors follow the layout of their parameter. See :mod:`bigseer.checkpoint.pieces`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from bigseer.checkpoint.pieces import Piece
from bigseer.distributed import get_rank, get_world_size
from bigseer.errors import CheckpointError


def _dtensor_piece(name: str, t: Any) -> Piece:
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    placements = tuple(t.placements)
    if len(placements) != 1 or not isinstance(placements[0], Shard) or placements[0].dim != 0:
        raise CheckpointError(f"{name}: DTensor placements {placements} are not supported "
                              "(only Shard(0) on a 1-d mesh)")
    local = t.to_local()
    _, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    inner = math.prod(t.shape[1:]) if t.dim() > 1 else 1
    start = int(offset[0]) * inner if t.dim() else 0
    return Piece(name, tuple(t.shape), local.reshape(-1), [(start, 0, local.numel())] if local.numel() else [])


def tensor_piece(name: str, t: torch.Tensor, layout: torch.Tensor | None = None, owner: int = 0) -> Piece:
    """This rank's piece of logical tensor ``name`` stored in ``t``, laid out like ``layout`` (default ``t``)."""
    layout = t if layout is None else layout
    if hasattr(t, "device_mesh") and hasattr(t, "to_local"):
        return _dtensor_piece(name, t)
    if getattr(layout, "_bigseer_sharded", False):
        group = getattr(layout, "_bigseer_shard_group", None)
        world, rank = get_world_size(group), get_rank(group)
        shape = (t.shape[0] * world, *t.shape[1:])
        return Piece(name, tuple(shape), t.reshape(-1), [(rank * t.numel(), 0, t.numel())])
    return Piece.whole(name, t, write=get_rank() == owner % get_world_size())


def owner_of(name: str) -> int:
    """The rank that writes a replicated tensor (spread by a stable hash of its name)."""
    return sum(name.encode()) % get_world_size()


def model_pieces(model: nn.Module) -> list[Piece]:
    """Pieces of every state-dict entry (``model.<fqn>``: parameters and persistent buffers)."""
    return [tensor_piece(f"model.{k}", v, owner=owner_of(k)) for k, v in model.state_dict(keep_vars=True).items()
            if isinstance(v, torch.Tensor)]


def ensure_momentum(optimizer: Any) -> None:
    """Create zero ``momentum_buffer`` state where an SGD-style optimizer has none yet, so that every
    checkpoint holds the whole optimizer state. Equivalent for LARS and torch SGD: their first step
    computes ``0 * momentum + g``, i.e. the buffer they would have initialised from ``g``."""
    for group in optimizer.param_groups:
        if not group.get("momentum"):
            continue
        for p in group["params"]:
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p)


def optimizer_pieces(model: nn.Module, optimizer: Any) -> list[Piece]:
    """Pieces of the optimizer's per-parameter tensor state (``optim.<fqn>.<key>``): tensors shaped like their
    parameter follow its layout; scalar tensors are replicated."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for p, state in optimizer.state.items():
        name = names.get(id(p))
        if name is None:
            continue
        for key, v in state.items():
            if not isinstance(v, torch.Tensor):
                continue
            full = f"optim.{name}.{key}"
            if v.shape == p.shape:
                out.append(tensor_piece(full, v, layout=p, owner=owner_of(full)))
            elif v.numel() == 1:
                out.append(Piece.whole(full, v, write=get_rank() == owner_of(full)))
    return out
