"""Top-1 / top-5 accuracy and frozen-feature extraction over a dataset sharded across ranks.

Each rank reads a disjoint shard (no padding, so no image counts twice); correct counts are summed and
features gathered with the explicit collectives of ``bigseer.distributed`` (world size 1 works too).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from bigseer.distributed import all_gather_cat, all_reduce_sum, get_rank, get_world_size
from bigseer.downstream.labeled_data import shard_indices

TOPK = (1, 5)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = TOPK) -> list[int]:
    """Number of rows whose target is among the top-``k`` logits, per ``k`` (``k`` capped at the class count)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top == targets[:, None]
    return [int(hit[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


def _shard_loader(dataset: Dataset, batch_size: int, num_workers: int) -> DataLoader:
    idx = shard_indices(len(dataset), get_rank(), get_world_size(), shuffle=False, pad=False)
    return DataLoader(Subset(dataset, idx), batch_size=batch_size, shuffle=False, num_workers=num_workers)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, dataset: Dataset, batch_size: int, num_workers: int = 0,
                        progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """``{"top1", "top5", "loss", "count"}`` of ``model`` on the whole ``dataset`` (percent), on every rank."""
    was_training = model.training
    model.eval()
    stats = torch.zeros(4, dtype=torch.float64)  # correct@1, correct@5, loss sum, count
    for x, y in _shard_loader(dataset, batch_size, num_workers):
        logits = model(x)
        c1, c5 = topk_correct(logits, y)
        loss = nn.functional.cross_entropy(logits, y, reduction="sum")
        stats += torch.tensor([c1, c5, float(loss), len(y)], dtype=torch.float64)
        if progress is not None:
            progress(len(y))
    model.train(was_training)
    stats = all_reduce_sum(stats)
    n = max(stats[3].item(), 1.0)
    return {"top1": 100.0 * stats[0].item() / n, "top5": 100.0 * stats[1].item() / n,
            "loss": stats[2].item() / n, "count": int(stats[3].item())}


@torch.no_grad()
def extract_features(fn: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, batch_size: int,
                     num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features [N, D], labels [N])`` of the whole ``dataset`` in dataset order, on every rank.

    ``fn`` maps an image batch to features. Ranks extract disjoint shards; shards are padded to equal
    length for the all-gather and the padding is dropped again.
    """
    n, ws = len(dataset), get_world_size()
    feats, labels = [], []
    for x, y in _shard_loader(dataset, batch_size, num_workers):
        feats.append(fn(x).float())
        labels.append(y)
    per_rank = -(-n // ws)
    dim = torch.tensor([feats[0].shape[1] if feats else 0])
    dim = int(all_gather_cat(dim).max()) if ws > 1 else int(dim)
    local = torch.cat(feats) if feats else torch.zeros(0, dim)
    local_y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    pad = per_rank - local.shape[0]
    local = torch.cat([local, local.new_zeros(pad, dim)])
    local_y = torch.cat([local_y, local_y.new_full((pad,), -1)])
    all_f = all_gather_cat(local)
    all_y = all_gather_cat(local_y)
    # rank r held dataset indices r, r + ws, ...: undo the round-robin deal, then drop the padding
    order = torch.cat([torch.arange(r, n, ws) for r in range(ws)])
    keep = torch.cat([torch.arange(r * per_rank, r * per_rank + len(range(r, n, ws))) for r in range(ws)])
    out_f = torch.empty(n, dim)
    out_y = torch.empty(n, dtype=torch.long)
    out_f[order] = all_f[keep]
    out_y[order] = all_y[keep]
    return out_f, out_y
