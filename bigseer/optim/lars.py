"""LARS / LARC (You et al. 2017) as SEER ran it: SGD with momentum whose per-tensor step is scaled by
``trust * ||p|| / (||g|| + wd * ||p||)`` (weight decay folded into the gradient first; apex LARC
semantics, which VISSL used). No clipping by default.

Sharded tensors get their norms from the whole tensor: FSDP2 ``DTensor`` parameters all-reduce their
local sums of squares over their mesh, and parameters marked ``_bigseer_sharded`` (sharded SwAV
prototypes) over ``p._bigseer_shard_group`` (default group when unset). One all-reduce per group of
ranks per step, so a sharded step equals the unsharded one.

DeepSpeed ZeRO 1/2/3 hands the optimizer one flat fp32 partition per param group (DeepSpeed issues 490,
153). ``bigseer.parallel.setup`` then builds ONE TENSOR PER GROUP marked ``zero_partitioned=True`` and
``zero_numel=<the tensor's numel>``: each rank's partition is the contiguous slice
``[rank * n, (rank + 1) * n)`` of that tensor (n = partition size; past ``zero_numel`` is padding, which
ZeRO-3 leaves uninitialised, so it is cut off), and the sums of squares of that slice are all-reduced
over the default group. DeepSpeed steps the groups one at a time on every rank in the same order, so
each such group costs one all-reduce of 2 numbers per step.

``LARS(..., zero_flat=True)`` keeps DeepSpeed's flat groups instead (``bigseer.parallel.setup`` then
passes the ordinary groups) and computes the same per-tensor trust ratios from each rank's flat
partition: ``bigseer.parallel.deepspeed`` gives it, per flat partition, the segments
``(tensor index, start, length)`` of the tensors in it, from the parameter boundaries DeepSpeed records
(``bigseer.parallel.zero_pieces.flat_segments``); the per-tensor partial sums of squares of all tensors
of the partition's group are all-reduced in ONE call, and each segment's gradient is scaled by its
tensor's ratio. Same maths as the one-tensor groups (up to the summation order of the norms), with one
all-reduce per flat group instead of one per tensor, and DeepSpeed's per-group step machinery run once
per group instead of once per tensor (``benchmarks/results/zero_cost.md``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterable

import torch
from torch import nn

from bigseer.distributed import all_reduce_sum, get_rank, get_world_size, is_distributed
from bigseer.errors import ConfigError


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _grad(p: torch.Tensor) -> torch.Tensor:
    """``p.grad`` of a parameter the step updates (``step`` passes only those with a gradient)."""
    assert p.grad is not None
    return p.grad


def _acc(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the accumulation dtype of its norms: float64 stays float64, everything else fp32."""
    return t if t.dtype == torch.float64 else t.float()


def _one_kind(tensors: list[torch.Tensor]) -> bool:
    """All floating point, on one device, of one dtype: what one ``torch._foreach_*`` call takes."""
    return (all(t.is_floating_point() for t in tensors) and len({t.device for t in tensors}) == 1
            and len({t.dtype for t in tensors}) == 1)


def _reduced(p: torch.Tensor) -> bool:
    """Whether ``p``'s norms need an all-reduce (sharded over a group of more than one rank)."""
    needs, group = _norm_group(p)
    return needs and is_distributed() and get_world_size(group) > 1


def _norm_group(p: torch.Tensor) -> tuple[bool, Any]:
    """(needs all-reduce, group) for the squared norms of parameter ``p``."""
    if hasattr(p, "device_mesh") and hasattr(p, "to_local"):
        return True, p.device_mesh.get_group()
    if getattr(p, "_bigseer_sharded", False):
        return True, getattr(p, "_bigseer_shard_group", None)
    return False, None


def _zero_sq(group: dict[str, Any]) -> torch.Tensor:
    """[1, 2] sums of squares (w, g) of a ZeRO group's full tensor, all-reduced over the default group."""
    if len(group["params"]) != 1 or not isinstance(group.get("zero_numel"), int):
        raise ConfigError("LARS zero_partitioned param groups need exactly one tensor and an int zero_numel "
                          f"(got {len(group['params'])} tensors, zero_numel={group.get('zero_numel')!r})")
    p = group["params"][0]
    flat = p.detach().reshape(-1)
    n = flat.numel()
    valid = max(0, min(n, group["zero_numel"] - get_rank() * n))  # padding past the tensor's end is cut
    g = p.grad.detach().reshape(-1)[:valid] if p.grad is not None else flat.new_zeros(0)
    sq = torch.stack([_acc(flat[:valid]).pow(2).sum(), _acc(g).pow(2).sum()]).view(1, 2)
    return all_reduce_sum(sq) if is_distributed() and get_world_size() > 1 else sq


class LARS(torch.optim.Optimizer):
    """SGD + momentum with layer-wise adaptive rate scaling.

    Param-group options: ``lr``, ``momentum`` (0.9), ``weight_decay`` (1e-5), ``trust_coefficient``
    (0.001), ``eps`` (1e-8), ``clip`` (False: apex LARC ``clip=True`` caps the ratio at 1 relative to
    ``lr``), ``lars_exclude`` (False: when True the group gets neither adaptation nor weight decay),
    ``zero_partitioned`` / ``zero_numel`` (set by ``bigseer.parallel.setup`` for DeepSpeed ZeRO; see the
    module doc). ``zero_flat`` (optimizer-wide, default False): under DeepSpeed ZeRO >= 1 take DeepSpeed's
    flat groups and per-tensor norms from the partition boundaries (module doc) instead of one group per
    tensor; it changes nothing outside DeepSpeed. ``foreach``: update the tensors of a group that share
    a device and dtype with ``torch._foreach_*`` ops (multi-tensor kernels) instead of a loop over tensors
    that computes each tensor's norms next to its update (cache-local). ``None`` (default), as torch's own
    optimizers choose: foreach on accelerators (one kernel launch per op instead of per tensor and op), the
    loop on CPU (no launches to save; the two measured equal there, ``benchmarks/results/lars.md``). Same
    maths either way; ZeRO-partitioned tensors always take the loop.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 1e-5,
                 trust_coefficient: float = 0.001, eps: float = 1e-8, clip: bool = False,
                 lars_exclude: bool = False, zero_flat: bool = False, foreach: bool | None = None) -> None:
        for name, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay),
                        ("trust_coefficient", trust_coefficient), ("eps", eps)):
            if not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"LARS {name}={v!r} is invalid: must be a number >= 0")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        eps=eps, clip=clip, lars_exclude=lars_exclude)
        super().__init__(params, defaults)
        self.zero_flat = bool(zero_flat)
        self.foreach = foreach
        # id(flat ZeRO partition) -> (segments [(tensor index, start, length)], tensors in its group)
        self._zero_segments: dict[int, tuple[list[tuple[int, int, int]], int]] = {}

    def set_zero_segments(self, partition: torch.Tensor, segments: list[tuple[int, int, int]], n_tensors: int) -> None:
        """Where the tensors of one flat DeepSpeed partition lie in it (``zero_flat``; called by
        ``bigseer.parallel.deepspeed``): ``segments`` = ``(tensor index in the group, start, length)`` of this
        rank's slices, ``n_tensors`` = tensors in the partition's group (the same on every rank)."""
        for j, start, length in segments:
            if not (0 <= j < n_tensors and start >= 0 and length > 0 and start + length <= partition.numel()):
                raise ConfigError(f"LARS zero segment ({j}, {start}, {length}) does not fit a partition of "
                                  f"{partition.numel()} elements with {n_tensors} tensors")
        self._zero_segments[id(partition)] = (list(segments), int(n_tensors))

    @torch.no_grad()
    def _flat_ratios(self, p: torch.Tensor, group: dict[str, Any]) -> list[tuple[int, int, torch.Tensor]]:
        """(start, length, trust ratio) of every tensor slice in flat ZeRO partition ``p``: the full tensors'
        norms from the per-segment sums of squares, all-reduced over the default group in one call."""
        segments, n_tensors = self._zero_segments[id(p)]
        flat, g = p.detach().reshape(-1), _grad(p).detach().reshape(-1)
        sq = torch.zeros(n_tensors, 2, dtype=_acc(flat[:0]).dtype)
        if segments:
            local = torch.stack([torch.stack([_acc(flat[s:s + n]).pow(2).sum(), _acc(g[s:s + n]).pow(2).sum()])
                                 for _, s, n in segments])
            sq.index_add_(0, torch.tensor([j for j, _, _ in segments]), local)
        if is_distributed() and get_world_size() > 1:
            sq = all_reduce_sum(sq)
        pn, gn = sq.sqrt().unbind(1)
        ratio = self._ratios(pn, gn, group)
        return [(s, n, ratio[j]) for j, s, n in segments]

    @torch.no_grad()
    def _norms(self, params: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(param, grad) full-tensor L2 norms: ``torch._foreach_norm`` of the local tensors; where sharded,
        their squares all-reduced (one call per process group) and the root taken again."""
        if not params:
            return []
        pn = torch._foreach_norm([_acc(_local(p)) for p in params])
        gn = torch._foreach_norm([_acc(_local(_grad(p))) for p in params])
        norms = torch.stack([torch.stack(pn), torch.stack(gn)], dim=1)  # [n, 2]
        by_group: dict[Any, list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            if _reduced(p):
                by_group[_norm_group(p)[1]].append(i)
        for group, idx in by_group.items():
            index = torch.tensor(idx, device=norms.device)
            norms[index] = all_reduce_sum(norms[index].pow(2), group).sqrt()
        return [(n[0], n[1]) for n in norms]

    @staticmethod
    def _ratios(pn: torch.Tensor, gn: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """Trust ratios (any shape) from param and grad norms: ``trust * ||p|| / (||g|| + wd * ||p|| + eps)``,
        capped at 1 relative to lr with ``clip``, and 1 where either norm is 0."""
        wd, lr = group["weight_decay"], group["lr"]
        ratio = group["trust_coefficient"] * pn / (gn + wd * pn + group["eps"])
        if group["clip"] and lr > 0:
            ratio = torch.clamp(ratio / lr, max=1.0)
        return torch.where((pn > 0) & (gn > 0), ratio, torch.ones_like(ratio))

    @torch.no_grad()
    def _foreach_update(self, params: list[torch.Tensor], group: dict[str, Any],
                        norms: list[tuple[torch.Tensor, torch.Tensor]] | None) -> None:
        """``step``'s per-tensor update for tensors of one device and dtype as a few ``torch._foreach_*``
        calls (one multi-tensor kernel per op on CUDA instead of a launch per tensor and op); the same
        element-wise operations in the same order as the loop. ``norms`` = (param, grad) norms per tensor, None
        for a ``lars_exclude`` group."""
        wd, lr, mom = group["weight_decay"], group["lr"], group["momentum"]
        pl = [_local(p) for p in params]
        d: list[torch.Tensor] | tuple[torch.Tensor, ...] = [_local(_grad(p)) for p in params]
        if wd:
            d = torch._foreach_add(d, pl, alpha=wd)
        if norms is not None:
            pn, gn = (torch.stack(n) for n in zip(*norms))
            ratio = list(self._ratios(pn, gn, group).to(pl[0].dtype).unbind())
            if wd:
                torch._foreach_mul_(d, ratio)
            else:
                d = torch._foreach_mul(d, ratio)
        if mom:
            old = [i for i, p in enumerate(params) if "momentum_buffer" in self.state[p]]
            for i, p in enumerate(params):
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
                    _local(self.state[p]["momentum_buffer"]).copy_(d[i])
            if old:
                bufs = [_local(self.state[params[i]]["momentum_buffer"]) for i in old]
                torch._foreach_mul_(bufs, mom)
                torch._foreach_add_(bufs, [d[i] for i in old])
            d = [_local(self.state[p]["momentum_buffer"]) for p in params]
        torch._foreach_add_(pl, d, alpha=-lr)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            exclude = group["lars_exclude"]
            zero = group.get("zero_partitioned", False) and not exclude
            if zero and group["params"]:
                # collective on every rank whatever its slice holds (padding only, or no grad)
                zero_norms = _zero_sq(group).sqrt()[0]
            if not params:
                continue
            wd, lr, mom = group["weight_decay"], group["lr"], group["momentum"]
            # flat ZeRO partitions (zero_flat): ratios by segment below, no whole-partition norm
            flat = set() if exclude or zero else {i for i, p in enumerate(params) if id(p) in self._zero_segments}
            plain = [i for i in range(len(params)) if i not in flat]
            kind = [_local(params[i]) for i in plain] + [_local(params[i].grad) for i in plain]
            foreach = (not zero and bool(plain) and _one_kind(kind)
                       and (self.foreach if self.foreach is not None else kind[0].device.type != "cpu"))
            # norms: a ZeRO partition's from its full tensor; for foreach all at once; for the loop only the
            # sharded tensors' up front (their all-reduce is batched), the others next to their update
            norms: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
            if zero:
                norms = {i: (zero_norms[0], zero_norms[1]) for i in plain}
            elif not exclude:
                first = plain if foreach else [i for i in plain if _reduced(params[i])]
                norms = dict(zip(first, self._norms([params[i] for i in first])))
            loop = plain + sorted(flat)
            if foreach:
                self._foreach_update([params[i] for i in plain], group,
                                     None if exclude else [norms[i] for i in plain])
                loop = sorted(flat)
            for i in loop:
                p = params[i]
                # element-wise work on the local shard (DTensor or plain); state stays a tensor like p
                pl, g = _local(p), _local(p.grad)
                if i in flat:
                    g = g.add(pl, alpha=wd) if wd else g.clone()
                    for start, length, ratio in self._flat_ratios(p, group):
                        g[start:start + length].mul_(ratio.to(g.dtype))
                elif not exclude:
                    pn, gn = norms[i] if i in norms else (_acc(pl).norm(), _acc(g).norm())
                    ratio = self._ratios(pn, gn, group).to(g.dtype)
                    g = g.add(pl, alpha=wd).mul_(ratio) if wd else g * ratio
                elif wd:
                    g = g.add(pl, alpha=wd)
                if mom:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                        _local(state["momentum_buffer"]).copy_(g)
                    else:
                        _local(state["momentum_buffer"]).mul_(mom).add_(g)
                    g = _local(state["momentum_buffer"])
                pl.add_(g, alpha=-lr)
        return loss


def lars_param_groups(model: nn.Module, exclude_bn_bias: bool = False) -> list[dict[str, Any]]:
    """Parameter groups for ``LARS``: with ``exclude_bn_bias`` the 1-d tensors (BN weights/biases and
    conv/linear biases) go in a group with ``lars_exclude=True`` (no adaptation, no weight decay).
    SEER/VISSL applied LARS to all parameters (``exclude_bn_bias=False``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not exclude_bn_bias:
        return [{"params": params}]
    regular = [p for p in params if p.ndim > 1]
    excluded = [p for p in params if p.ndim <= 1]
    groups: list[dict[str, Any]] = [{"params": regular}]
    if excluded:
        groups.append({"params": excluded, "lars_exclude": True, "weight_decay": 0.0})
    return groups


def build_lars(params: Iterable[Any], *, lr: float, momentum: float = 0.9, weight_decay: float = 1e-5,
               trust: float = 0.001, exclude_bn_bias: bool = False, clip: bool = False) -> LARS:
    """``LARS`` over ``params`` (tensors or param groups, e.g. what ``bigseer.parallel.setup`` passes to its
    ``optimizer_factory``). With ``exclude_bn_bias`` every group's 1-d tensors (BN weights/biases, biases)
    move to a ``lars_exclude=True``, ``weight_decay=0`` group of their own."""
    groups = list(params)
    if groups and not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    if exclude_bn_bias:
        split: list[dict[str, Any]] = []
        for g in groups:
            ps = list(g["params"])
            rest = {k: v for k, v in g.items() if k != "params"}
            if g.get("lars_exclude"):
                split.append({**rest, "params": ps})
                continue
            if any(p.ndim > 1 for p in ps):
                split.append({**rest, "params": [p for p in ps if p.ndim > 1]})
            if any(p.ndim <= 1 for p in ps):
                split.append({**rest, "params": [p for p in ps if p.ndim <= 1], "lars_exclude": True,
                              "weight_decay": 0.0})
        groups = split
    return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust, clip=clip)
