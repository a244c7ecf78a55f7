"""Plain float64 SwAV reference (VISSL/SwAV-style, unstabilised, one process) used by the ssl tests."""

from __future__ import annotations

from typing import Sequence

import torch


def ref_sinkhorn(scores: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """Codes [B, K] for scores [B, K] on one process, float64, textbook order of operations."""
    q = torch.exp(scores.detach().double() / eps).t()
    q /= q.sum()
    k, b = q.shape
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t()


def ref_loss(scores: Sequence[torch.Tensor], tau: float, eps: float, iters: int,
             assign: Sequence[int] = (0, 1), queue: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """Mean SwAV loss over the batch; ``queue[j]`` are extra Sinkhorn rows for the j-th assignment crop."""
    total = 0.0
    for j, i in enumerate(assign):
        block = scores[i].detach().double()
        if queue is not None:
            block = torch.cat([block, queue[j].double()])
        q = ref_sinkhorn(block, eps, iters)[: scores[i].shape[0]]
        sub = 0.0
        for v in range(len(scores)):
            if v != i:
                sub = sub - (q * torch.log_softmax(scores[v].double() / tau, dim=1)).sum(dim=1).mean()
        total = total + sub / (len(scores) - 1)
    return total / len(assign)


def random_scores(num_crops: int, batch: int, k: int, dim: int = 16, seed: int = 0) -> list[torch.Tensor]:
    """Cosine scores of random unit embeddings against random unit prototypes (float64 leaves)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.nn.functional.normalize(torch.randn(k, dim, generator=g, dtype=torch.float64), dim=1)
    out = []
    for _ in range(num_crops):
        e = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=1)
        out.append((e @ protos.t()).requires_grad_())
    return out
