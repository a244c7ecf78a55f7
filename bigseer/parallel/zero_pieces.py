"""Checkpoint pieces of DeepSpeed ZeRO partitions: the fp32 master and its optimizer state, by parameter.

ZeRO-1/2 flatten each param group into ``bit16_groups_flat[i]`` (parameters are views into it) and give
rank ``r`` the slice ``[r n, (r + 1) n)`` as ``single_partition_of_fp32_groups[i]`` (``n`` = partition
size): a parameter's piece is the intersection of its span in the flat buffer with that slice. ZeRO-3
partitions every parameter itself (``ds_tensor``: elements ``[r ps, (r + 1) ps)``, ``ps`` = partition
size) and concatenates the partitions of a sub-group into ``fp32_partitioned_groups_flat[i]``. The pieces
are views into DeepSpeed's fp32 master (and the base optimizer's state of it), so a checkpoint restores
the master exactly whatever the precision; :func:`refresh_after_load` then rebuilds DeepSpeed's
low-precision / gathered copies from it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from bigseer.checkpoint.pieces import Piece
from bigseer.parallel.state import ensure_momentum, owner_of, tensor_piece


def _buffer_pieces(model: nn.Module) -> list[Piece]:
    params = {n for n, _ in model.named_parameters()}
    return [tensor_piece(f"model.{k}", v, owner=owner_of(k)) for k, v in model.state_dict(keep_vars=True).items()
            if k not in params and isinstance(v, torch.Tensor)]


def _state_pieces(opt: Any, name: str, shape: tuple[int, ...], master: torch.Tensor,
                  ranges: list[tuple[int, int, int]]) -> list[Piece]:
    out = [Piece(f"model.{name}", shape, master, ranges)]
    for key, v in opt.optimizer.state.get(master, {}).items():
        if isinstance(v, torch.Tensor) and v.numel() == master.numel():
            out.append(Piece(f"optim.{name}.{key}", shape, v.reshape(-1), ranges))
    return out


# (tensor index in its group, tensor, start in the tensor, start in the partition, length)
Span = tuple[int, nn.Parameter, int, int, int]


def _zero12_spans(opt: Any) -> list[tuple[torch.Tensor, list[Any], list[Span]]]:
    """Per ZeRO-1/2 flat group: (this rank's fp32 partition, the group's tensors, their spans in it)."""
    out = []
    for i, params in enumerate(opt.bit16_groups):
        flat = opt.bit16_groups_flat[i]
        master = opt.single_partition_of_fp32_groups[i]
        n = master.numel()
        part_lo = dist.get_rank(group=opt.real_dp_process_group[i]) * n
        spans = []
        for j, p in enumerate(params):
            off = (p.data.data_ptr() - flat.data_ptr()) // flat.element_size()
            lo, hi = max(part_lo, off), min(part_lo + n, off + p.numel())
            if hi > lo:
                spans.append((j, p, lo - off, lo - part_lo, hi - lo))
        out.append((master, params, spans))
    return out


def _zero3_spans(opt: Any) -> list[tuple[torch.Tensor, list[Any], list[Span]]]:
    """Per ZeRO-3 sub-group: (this rank's fp32 partition, the sub-group's tensors, their spans in it)."""
    rank = dist.get_rank(group=opt.dp_process_group)
    out = []
    for i, params in enumerate(opt.fp16_groups):
        offset, spans = 0, []
        for j, p in enumerate(params):
            ps = p.ds_tensor.ds_numel
            lo, hi = rank * ps, min((rank + 1) * ps, p.ds_numel)
            if hi > lo:
                spans.append((j, p, lo, offset, hi - lo))
            offset += ps
        out.append((opt.fp32_partitioned_groups_flat[i], params, spans))
    return out


def zero12_pieces(opt: Any, model: nn.Module) -> list[Piece]:
    """Pieces of a ZeRO-1/2 optimizer (``DeepSpeedZeroOptimizer``) plus the model's buffers."""
    ensure_momentum(opt.optimizer)
    names = {id(p): n for n, p in model.named_parameters()}
    pieces = _buffer_pieces(model)
    for master, _, spans in _zero12_spans(opt):
        for _, p, src, dst, length in spans:
            pieces += _state_pieces(opt, names[id(p)], tuple(p.shape), master, [(src, dst, length)])
    return pieces


def zero3_pieces(opt: Any, model: nn.Module) -> list[Piece]:
    """Pieces of a ZeRO-3 optimizer (``DeepSpeedZeroOptimizer_Stage3``) plus the model's buffers. ZeRO-3
    puts each sub-group's master into its param group only while stepping it, so momentum buffers are
    created here by sub-group (see ``ensure_momentum``)."""
    for i, master in enumerate(opt.fp32_partitioned_groups_flat):
        group = opt.optimizer.param_groups[opt.sub_group_to_group_id[i]]
        state = opt.optimizer.state[master]
        if group.get("momentum") and state.get("momentum_buffer") is None:
            state["momentum_buffer"] = torch.zeros_like(master)
    names = {id(p): n for n, p in model.named_parameters()}
    pieces = _buffer_pieces(model)
    for master, _, spans in _zero3_spans(opt):
        for _, p, src, dst, length in spans:
            pieces += _state_pieces(opt, names[id(p)], tuple(p.ds_shape), master, [(src, dst, length)])
    return pieces


@torch.no_grad()
def refresh_after_load(opt: Any, model: nn.Module, stage: int) -> None:
    """Rebuild DeepSpeed's bit16 copies (and ZeRO-3's persistent full parameters) from the loaded master."""
    if stage in (1, 2):
        opt.update_lp_params()  # fp32 partition -> bit16 partition, then all-gather into every rank's params
        return
    for low, master in zip(opt.fp16_partitioned_groups_flat, opt.fp32_partitioned_groups_flat):
        low.data.copy_(master.data)
    world = dist.get_world_size(group=opt.dp_process_group)
    for p in model.parameters():
        if p.data.numel() == p.ds_numel:  # gathered and kept (persistent): its full copy is stale now
            parts = torch.empty(p.ds_tensor.ds_numel * world, dtype=p.ds_tensor.dtype, device=p.ds_tensor.device)
            dist.all_gather_into_tensor(parts, p.ds_tensor.data.reshape(-1), group=opt.dp_process_group)
            p.data.copy_(parts[:p.ds_numel].view(p.ds_shape))


def flat_segments(opt: Any, stage: int) -> list[tuple[torch.Tensor, list[tuple[int, int, int]], int]]:
    """Per flat fp32 partition of a ZeRO-1/2/3 optimizer: ``(partition, segments, n_tensors)`` with
    ``segments`` = ``(index of the tensor in its group, start in the partition, length)`` of this rank's
    slice of every tensor of the group (the spans of the pieces above), ``n_tensors`` = tensors
    in that group (the same on every rank, so per-tensor sums can be all-reduced by index). Padding is in
    no segment. Used by ``LARS(zero_flat=True)`` for exact per-tensor trust ratios on flat groups."""
    groups = _zero12_spans(opt) if stage in (1, 2) else _zero3_spans(opt)
    return [(master, [(j, dst, length) for j, _, _, dst, length in spans], len(params))
            for master, params, spans in groups]
