"""Sinkhorn-Knopp equipartition of scores into soft codes (SwAV), exact across data-parallel ranks.

Maths (SwAV, Caron et al. 2020, algorithm as in VISSL's ``distributed_sinkhornknopp``): with
``Q = exp(S / eps)``, alternately make every prototype's mass over the *global* batch equal and every
sample's mass over all prototypes equal; the final step normalises samples, so each row of the
result sums to 1 and the column mass is (approximately, exactly in the limit) ``B_global / K``.

Stabilisation: before ``exp`` each prototype column is shifted by its maximum over the global batch.
A per-prototype factor cancels exactly in the first column normalisation, so the result equals the
unshifted algorithm, while every column keeps at least one entry equal to 1 (no 0/0) and nothing
overflows (eps = 0.03 with cosine scores gives exponents in [-67, 0], representable in fp32). If a
sample's whole row still underflows (tiny eps), the first row normalisation is redone in the log domain.
The initial division by the total sum used by VISSL/lightly is a constant factor and is dropped.
"""

from __future__ import annotations

from typing import Literal

import torch

from bigseer.distributed import Group, all_reduce_max, all_reduce_sum
from bigseer.errors import ConfigError

# Row sums below this trigger the log-domain first step (sqrt of the smallest normal number).
_SAFE_MIN = {torch.float32: torch.finfo(torch.float32).tiny ** 0.5,
             torch.float64: torch.finfo(torch.float64).tiny ** 0.5}


def check_sinkhorn_args(epsilon: float, num_iters: int) -> None:
    """Raise ConfigError for a non-positive epsilon or a negative / non-integer iteration count."""
    if not isinstance(epsilon, (int, float)) or not epsilon > 0 or epsilon != epsilon or epsilon == float("inf"):
        raise ConfigError(f"sinkhorn epsilon must be a finite number > 0, got {epsilon!r}")
    if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 0:
        raise ConfigError(f"sinkhorn num_iters must be an integer >= 0, got {num_iters!r}")


def sinkhorn_codes(scores: torch.Tensor, epsilon: float, num_iters: int, group: Group,
                   split: Literal["batch", "prototypes", "none"]) -> torch.Tensor:
    """Sinkhorn on a ``[rows, cols]`` block of the global score matrix (no argument checks).

    ``split="batch"``: ranks of ``group`` hold disjoint samples (rows) and all prototypes;
    ``split="prototypes"``: ranks hold all samples and disjoint prototype columns;
    ``split="none"``: the block is the whole matrix. Computed without autograd in fp32
    (fp64 if ``scores`` is fp64), with autocast disabled. Returns codes of the same block.
    """
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    batch_split, proto_split = split == "batch", split == "prototypes"

    def row_sums(t: torch.Tensor) -> torch.Tensor:
        r = t.sum(dim=1, keepdim=True)
        return all_reduce_sum(r, group) if proto_split else r

    with torch.no_grad(), torch.autocast(scores.device.type, enabled=False):
        s = scores.detach().to(dtype)
        if num_iters == 0:  # plain row softmax of s / eps
            row_max = s.amax(dim=1, keepdim=True)
            row_max = all_reduce_max(row_max, group) if proto_split else row_max
            q = s.sub(row_max).div_(epsilon).exp_()
            return q.div_(row_sums(q))
        col_max = s.amax(dim=0)
        col_max = all_reduce_max(col_max, group) if batch_split else col_max
        q = s.sub(col_max).div_(epsilon).exp_()
        for it in range(num_iters):
            col_sum = q.sum(dim=0)
            col_sum = all_reduce_sum(col_sum, group) if batch_split else col_sum
            q.div_(col_sum)
            row_sum = row_sums(q)
            if it == 0 and bool(row_sum.min() < _SAFE_MIN[dtype]):
                # Some sample lies > ~87 * eps below every prototype's batch maximum (fp32), so its row
                # underflowed. Redo this first row normalisation in the log domain (same collectives on
                # every rank: the decision uses all-reduced row sums when rows are split).
                log_q = s.sub(col_max).div_(epsilon).sub_(col_sum.log())
                row_max = log_q.amax(dim=1, keepdim=True)
                row_max = all_reduce_max(row_max, group) if proto_split else row_max
                q = log_q.sub_(row_max).exp_()
                row_sum = row_sums(q)
            q.div_(row_sum)
    return q


def sinkhorn(scores: torch.Tensor, epsilon: float, num_iters: int, group: Group = None) -> torch.Tensor:
    """Soft codes ``[B_local, K]`` for scores ``[B_local, K]`` whose batch is split over ``group``.

    Rows sum to 1; column mass is equalised over the global batch (all ranks of ``group``; None = the
    default group, or one process when none is initialised). fp32 (fp64 for fp64 input) whatever the
    autocast state; no gradient. ``num_iters=0`` gives ``softmax(scores / epsilon)`` per row.
    Argument errors are raised before any collective.
    """
    check_sinkhorn_args(epsilon, num_iters)
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        raise ConfigError(f"sinkhorn scores must be a 2-D tensor [B, K], got shape "
                          f"{tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__}")
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ConfigError(f"sinkhorn scores must have B > 0 samples and K > 0 prototypes, got {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise ConfigError(f"sinkhorn scores must be floating point, got {scores.dtype}")
    return sinkhorn_codes(scores, float(epsilon), num_iters, group, "batch")
