"""Weighted k-nearest-neighbour classification of frozen features (a fast check, no training).

Cosine similarity between L2-normalised features; each of the ``k`` neighbours votes for its class with
weight ``exp(sim / temperature)`` (the protocol of Wu et al. 2018, also used by DINO; k=20, T=0.07).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                num_classes: int, k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Class scores ``[N_test, num_classes]`` from the ``k`` most similar training features."""
    train = F.normalize(train_features.float(), dim=1)
    k = min(k, train.shape[0])
    out = []
    for start in range(0, test_features.shape[0], chunk):
        q = F.normalize(test_features[start:start + chunk].float(), dim=1)
        sim, idx = (q @ train.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[idx], weights)
        out.append(votes)
    return torch.cat(out) if out else torch.zeros(0, num_classes)
