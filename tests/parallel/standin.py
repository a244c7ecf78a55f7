"""A stand-in for SwAVModel in parallel tests: RegNet trunk + small linear head + a simple loss."""

from __future__ import annotations

import torch
from torch import nn

from bigseer.models import build_regnet


class StandIn(nn.Module):
    """``forward(x) -> 0-dim loss``; ``normalize_prototypes`` L2-normalises the head rows."""

    def __init__(self, preset: str = "regnety_test", k: int = 6, shard: torch.Tensor | None = None) -> None:
        super().__init__()
        self.trunk = build_regnet(preset, zero_init_last=False)
        self.head = nn.Linear(self.trunk.num_features, k, bias=False)
        self.shard = None
        if shard is not None:  # a rank-local slice of a sharded tensor (like sharded SwAV prototypes)
            self.shard = nn.Parameter(shard.clone())
            self.shard._bigseer_sharded = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.trunk(x))  # under bf16/fp16 the wrapper must hand the head fp32 inputs
        loss = (z.float() ** 2).mean() + z.float().mean()
        return loss + (self.shard ** 2).sum() if self.shard is not None else loss

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        w = self.head.weight
        w.copy_(nn.functional.normalize(w, dim=1))


def make_model(seed: int = 0, preset: str = "regnety_test", shard: torch.Tensor | None = None) -> StandIn:
    torch.manual_seed(seed)
    return StandIn(preset, shard=shard)


def make_batch(n: int, seed: int = 1, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def run_steps(p, rank: int, world: int, steps: int = 2) -> list[float]:
    """``steps`` training steps of a ``bigseer.parallel.Parallel`` on this rank's slice of a global batch of
    4 x world; asserts every step is applied; returns this rank's losses."""
    losses = []
    for step in range(steps):
        x = make_batch(4 * world, seed=10 + step)[rank * 4:(rank + 1) * 4]
        loss = p.forward(x)
        p.backward(loss)
        assert p.step()
        p.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def emulate_ranks(world: int, steps: int, optimizer_factory, *, dtype: torch.dtype = torch.float64,
                  seed: int = 10, syncbn: bool = False, grad_clip: float | None = None) -> tuple[list[float], dict]:
    """What ``run_steps`` on ``world`` data-parallel ranks computes, in one process (default float64): the
    reference whose distance to the fp32 run measures this computation's fp32 error (tests/numerics.py).

    Without SyncBN every rank normalises its own 4 samples, so each slice runs its own forward and the
    gradients are averaged; with SyncBN over the world it is one forward of the global batch (the mean of
    equal-size per-rank means). Returns (per step the per-rank losses, one value with SyncBN, the
    ranks' mean; the weights without BN running stats)."""
    model = make_model(0).to(dtype)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = optimizer_factory([{"params": list(model.parameters())}])
    losses = []
    for step in range(steps):
        x = make_batch(4 * world, seed=seed + step).to(dtype)
        slices = [x] if syncbn else [x[r * 4:(r + 1) * 4] for r in range(world)]
        per_rank = [model(s) for s in slices]
        total = sum(per_rank) / len(per_rank)
        total.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(list(model.parameters()), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append([float(v.detach()) for v in per_rank])
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()
               if "running" not in k and "num_batches" not in k}
    return losses, weights, {k: init[k] for k in weights}


def save_state(p, directory: str) -> None:
    """Checkpoint a ``Parallel``'s pieces (collective), as the engine does."""
    from bigseer import checkpoint as ckpt

    p.sync_bn_stats()
    ckpt.save_checkpoint(directory, 1, p.state_pieces(), {"step": 1}, {"model": "standin"})


def load_state(p, directory: str) -> None:
    """Restore what :func:`save_state` wrote into a ``Parallel`` of any backend / world size (collective)."""
    from bigseer import checkpoint as ckpt

    ckpt.load_checkpoint(ckpt.find_latest(directory), p.state_pieces())
    p.after_load()
