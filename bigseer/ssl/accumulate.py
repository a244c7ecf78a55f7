"""SwAV codes over the effective batch of an accumulated step (one optimizer step per N micro-batches).

Sinkhorn couples every sample of a step: its column normalisation runs over the whole global batch. Computing
codes per micro-batch would silently be another method (codes equipartitioned over B*W instead of B*W*N
samples). An accumulated step therefore runs in two passes (:func:`bigseer.trainer.accumulated_swav_step`):

1. a scoring pass, without gradients: each micro-batch's assignment crops go through the trunk (each
   resolution run whole, so BatchNorm sees the batch it sees in training) and the head, giving the rows
   Sinkhorn needs (:meth:`bigseer.ssl.head.SwAVHead.assignment_scores`);
2. :func:`effective_codes` runs Sinkhorn once over all micro-batches' rows of every rank (the same
   collectives as without accumulation, on N times the rows), and each micro-batch then does its forward and
   backward with its codes fixed (:meth:`bigseer.ssl.head.SwAVHead.codes_given`).

Cost: one extra no-grad forward of the assignment crops' resolution runs per micro-batch (for SwAV's
2x224 + 4x96 the 224 px run is ~73% of the forward FLOPs, so ~25% of a step's compute), and the scores of
N micro-batches held at once (``N * B * K`` floats per assignment crop). The result equals N times as many
ranks up to the order of floating-point sums.
"""

from __future__ import annotations

from typing import Any

import torch

from bigseer.distributed import Group
from bigseer.ssl.swav import assignment_codes


def effective_codes(scored: list[dict[str, Any]], epsilon: float, num_iters: int,
                    group: Group) -> list[list[list[torch.Tensor]]]:
    """``codes[m][h][j]``: micro-batch ``m``'s codes for prototype head ``h`` and assignment crop ``j``, from the
    scoring pass's outputs ``scored[m]`` (every micro-batch of this rank), Sinkhorn over all of them at once
    (and over every rank of ``group``, and the queue's rows when it is full)."""
    first = scored[0]
    codes: list[list[list[torch.Tensor]]] = [[[] for _ in first["scores"]] for _ in scored]
    for h, per_crop in enumerate(first["scores"]):
        for j in range(len(per_crop)):
            blocks = [s["scores"][h][j] for s in scored]
            queue = first["queue"][h][j] if first["queue"][h] else None
            q = assignment_codes(torch.cat(blocks), queue, epsilon, num_iters, group, first["split"])
            for m, part in enumerate(q.split([b.shape[0] for b in blocks])):
                codes[m][h].append(part)
    return codes


def queue_rows(scored: list[dict[str, Any]]) -> torch.Tensor:
    """This rank's new queue rows of the step ``[n_assign, N*B, D]``, micro-batch ``m``'s at ``m*B``
    (:mod:`bigseer.checkpoint.queue`)."""
    return torch.cat([s["emb"] for s in scored], dim=1)
