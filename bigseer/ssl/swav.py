"""The SwAV swapped-prediction loss, exact across data-parallel ranks and K-sharded prototypes.

For each assignment crop ``i``: ``q_i = sinkhorn(scores[i].detach())``; the crop's loss is the mean over
every other crop ``v`` of the cross-entropy ``-sum_k q_i log softmax(scores[v] / tau)``; the loss is the
mean over assignment crops and over samples. ``log softmax`` is computed once per crop and the sum over
``v != i`` as ``sum_v logp_v - logp_i``, so the cost is linear in the number of crops.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch

from bigseer.distributed import Group, all_reduce_max
from bigseer.errors import ConfigError
from bigseer.ssl.collectives import all_reduce_sum_autograd
from bigseer.ssl.sinkhorn import check_sinkhorn_args, sinkhorn_codes


def check_loss_args(num_crops: int, temperature: float, epsilon: float, num_iters: int,
                    crops_for_assign: Sequence[int]) -> tuple[int, ...]:
    """Validate loss settings against the crop count (local information only); return the assign tuple."""
    check_sinkhorn_args(epsilon, num_iters)
    if not isinstance(temperature, (int, float)) or not temperature > 0 or temperature == float("inf"):
        raise ConfigError(f"swav temperature must be a finite number > 0, got {temperature!r}")
    if num_crops < 2:
        raise ConfigError(f"swav loss needs at least 2 crops, got {num_crops}")
    assign = tuple(crops_for_assign)
    if not assign:
        raise ConfigError("crops_for_assign must name at least one crop")
    for c in assign:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < num_crops:
            raise ConfigError(f"crops_for_assign {assign} out of range: crops are numbered 0..{num_crops - 1}")
    if len(set(assign)) != len(assign):
        raise ConfigError(f"crops_for_assign {assign} names a crop twice")
    return assign


def check_scores(scores: Sequence[torch.Tensor]) -> None:
    """Raise ConfigError unless ``scores`` is a non-empty list of equally shaped non-empty 2-D float tensors."""
    if isinstance(scores, torch.Tensor) or len(scores) == 0:
        raise ConfigError("swav scores must be a non-empty sequence of per-crop [B, K] tensors")
    first = scores[0]
    for v, s in enumerate(scores):
        if not isinstance(s, torch.Tensor) or s.dim() != 2 or not s.is_floating_point():
            raise ConfigError(f"swav scores[{v}] must be a 2-D float tensor [B, K], got "
                              f"{tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__}")
        if s.shape != first.shape:
            raise ConfigError(f"swav crops have mismatched score shapes: scores[0] is {tuple(first.shape)}, "
                              f"scores[{v}] is {tuple(s.shape)}")
    if first.shape[0] == 0 or first.shape[1] == 0:
        raise ConfigError(f"swav scores must have B > 0 samples and K > 0 prototypes, got {tuple(first.shape)}")


def _log_softmax(z: torch.Tensor, group: Group, split: str) -> torch.Tensor:
    """log softmax over K; with ``split="prototypes"`` K is spread over ``group`` (all-reduced logsumexp)."""
    if split != "prototypes":
        return torch.log_softmax(z, dim=1)
    shift = all_reduce_max(z.detach().amax(dim=1), group)  # the shift cancels in value and gradient
    sum_exp = all_reduce_sum_autograd(torch.exp(z - shift[:, None]).sum(dim=1), group)
    return z - (shift + torch.log(sum_exp))[:, None]


def assignment_codes(scores: torch.Tensor, queue_scores: torch.Tensor | None, epsilon: float, num_iters: int,
                     group: Group, split: Literal["batch", "prototypes", "none"]) -> torch.Tensor:
    """Sinkhorn codes of the rows of ``scores`` (detached), with ``queue_scores`` rows (if any) taking part in the
    equipartition and dropped from the result."""
    block = scores.detach()
    if queue_scores is not None:
        block = torch.cat([block, queue_scores.detach().to(block.dtype)])
    q = sinkhorn_codes(block, epsilon, num_iters, group, split)
    return q[: scores.shape[0]] if queue_scores is not None else q


def swav_objective(scores: Sequence[torch.Tensor], temperature: float, epsilon: float, num_iters: int,
                   crops_for_assign: Sequence[int], group: Group,
                   split: Literal["batch", "prototypes", "none"],
                   queue_scores: Sequence[torch.Tensor | None] | None = None,
                   local_rows: slice | None = None, capture: dict | None = None,
                   codes: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """SwAV loss core (arguments already checked; see :func:`swav_loss`).

    ``split="batch"``: ``scores[v]`` are this rank's samples against all prototypes.
    ``split="prototypes"``: ``scores[v]`` are the global batch against this rank's prototype shard; the
    per-sample cross-entropies are summed over shards (autograd-aware) and ``local_rows`` selects this
    rank's samples. ``queue_scores[j]`` (for the j-th assignment crop, or None) are extra rows used by
    Sinkhorn only. Returns the mean loss over this rank's samples (fp32, or fp64 for fp64 scores).
    ``capture`` (a dict, optional) receives detached tensors for health statistics, at no extra cost:
    ``logp`` (per crop), ``codes`` (per assignment crop, batch rows only) and ``per_sample`` (the
    per-sample losses of every row, before ``local_rows`` is applied).
    ``codes[j]`` (optional) are the j-th assignment crop's codes, computed by the caller over a larger batch
    (gradient accumulation: :mod:`bigseer.ssl.accumulate`); Sinkhorn and ``queue_scores`` are then not used.
    """
    assign = tuple(crops_for_assign)
    dtype = torch.float64 if scores[0].dtype == torch.float64 else torch.float32
    with torch.autocast(scores[0].device.type, enabled=False):
        logp = [_log_softmax(s.to(dtype) / temperature, group, split) for s in scores]
        logp_sum = logp[0] + logp[1]
        for lp in logp[2:]:
            logp_sum = logp_sum + lp
        per_sample: torch.Tensor | None = None
        for j, i in enumerate(assign):
            if codes is not None:
                q = codes[j].to(dtype)
            else:
                q = assignment_codes(scores[i], queue_scores[j] if queue_scores is not None else None, epsilon,
                                     num_iters, group, split)
            if capture is not None:
                capture.setdefault("codes", []).append(q.detach())
            term = (q * (logp_sum - logp[i])).sum(dim=1)
            per_sample = term if per_sample is None else per_sample + term
        assert per_sample is not None  # assign is not empty (check_loss_args)
        per_sample = per_sample * (-1.0 / ((len(scores) - 1) * len(assign)))
        if split == "prototypes":
            per_sample = all_reduce_sum_autograd(per_sample, group)
        if capture is not None:
            capture["logp"] = [lp.detach() for lp in logp]
            capture["per_sample"] = per_sample.detach()
        if split == "prototypes" and local_rows is not None:
            per_sample = per_sample[local_rows]
        return per_sample.mean()


def swav_loss(scores: Sequence[torch.Tensor], temperature: float, epsilon: float, num_iters: int,
              crops_for_assign: Sequence[int] = (0, 1), group: Group = None) -> torch.Tensor:
    """SwAV loss of this rank's samples; the mean over ranks equals the loss of the concatenated batch.

    ``scores``: per-crop ``[B_local, K]`` prototype scores (same shape for every crop). Codes come from
    :func:`bigseer.ssl.sinkhorn` over the global batch of ``group`` (None = default group / one process);
    the softmax and cross-entropy are local. Computed in fp32 under any autocast (fp64 for fp64 scores).
    Gradients flow into every crop's scores except through the codes. Raises ConfigError for mismatched
    crop shapes, an empty batch, out-of-range ``crops_for_assign`` or bad settings, before any collective.
    """
    check_scores(scores)
    assign = check_loss_args(len(scores), temperature, epsilon, num_iters, crops_for_assign)
    return swav_objective(scores, float(temperature), float(epsilon), num_iters, assign, group, "batch")
