"""SwAVModel: trunk + SwAVHead with a multi-crop forward (one trunk call per run of equal resolution)."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from bigseer.distributed import Group
from bigseer.errors import ConfigError
from bigseer.ssl.head import SwAVHead
from bigseer.ssl.stats import SwAVStats
from bigseer.ssl.swav import check_loss_args


class SwAVModel(nn.Module):
    """SwAV pretraining model: ``forward(crops) -> loss`` (0-dim fp32, this rank's loss).

    ``crops``: list whose items are one crop ``[B, 3, H, W]`` or a group ``[n, B, 3, H, W]`` of one
    resolution; crops are numbered in order. Consecutive items of equal resolution and dtype go through
    the trunk in one call (as in the SwAV reference). Loss settings: ``temperature``, ``epsilon``,
    ``sinkhorn_iters``, ``crops_for_assign``; ``freeze_prototypes_iters`` is used by
    :meth:`on_after_backward`. ``group`` is the process group for Sinkhorn / sharded prototypes (None: the
    head's group, which is None = default group / one process unless the head was built with one).
    """

    def __init__(self, trunk: nn.Module, head: SwAVHead, *, temperature: float = 0.1, epsilon: float = 0.05,
                 sinkhorn_iters: int = 3, crops_for_assign: Sequence[int] = (0, 1),
                 freeze_prototypes_iters: int = 0, group: Group = None) -> None:
        super().__init__()
        assign = tuple(crops_for_assign)
        top = max((c for c in assign if isinstance(c, int)), default=0)
        check_loss_args(max(2, top + 1), temperature, epsilon, sinkhorn_iters, assign)
        if isinstance(freeze_prototypes_iters, bool) or not isinstance(freeze_prototypes_iters, int) \
                or freeze_prototypes_iters < 0:
            raise ConfigError(f"freeze_prototypes_iters must be an integer >= 0, got {freeze_prototypes_iters!r}")
        if head.queue_length and len(assign) != head.queue_crops:
            raise ConfigError(f"head queue stores {head.queue_crops} assignment crops but crops_for_assign is "
                              f"{assign}")
        self.trunk = trunk
        self.head = head
        self.temperature = float(temperature)
        self.epsilon = float(epsilon)
        self.sinkhorn_iters = sinkhorn_iters
        self.crops_for_assign = assign
        self.freeze_prototypes_iters = freeze_prototypes_iters
        if group is None:  # keep a group the head was built with
            group = head.group
        self.group = group
        head.set_group(group)

    def init_weights(self, seed: int | None = None, rows_of: Any = None) -> "SwAVModel":
        """Initialise trunk and head as functions of (seed, name, row) (:mod:`bigseer.models.init`); ``rows_of``
        maps a tensor to (its local rows, first global row) for callers that hold shards. Returns self."""
        from bigseer.models.init import default_seed, whole

        seed = default_seed() if seed is None else seed
        trunk: Any = self.trunk  # any trunk with init_weights(seed=, rows_of=) (a RegNet)
        trunk.init_weights(seed=seed, rows_of=rows_of or whole)
        self.head.init_weights(seed=seed + 1, rows_of=rows_of or whole)
        return self

    @property
    def last_stats(self) -> "SwAVStats | None":
        """Health statistics of the last forward (``head.last_stats``; see :mod:`bigseer.ssl.stats`)."""
        return self.head.last_stats

    def set_group(self, group: Group) -> None:
        """Use ``group`` for Sinkhorn and sharded prototypes."""
        self.head.set_group(group)
        self.group = group

    @staticmethod
    def group_crops(crops: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Check ``crops`` and merge consecutive items of equal resolution into ``[n, B, 3, H, W]`` runs."""
        if isinstance(crops, torch.Tensor) or len(crops) == 0:
            raise ConfigError("SwAVModel.forward expects a non-empty list of crops [B,3,H,W] or groups [n,B,3,H,W]")
        runs: list[list[torch.Tensor]] = []
        batch = None
        for i, c in enumerate(crops):
            if not isinstance(c, torch.Tensor) or c.dim() not in (4, 5):
                shape = tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__
                raise ConfigError(f"crops[{i}] must be [B,3,H,W] or [n,B,3,H,W], got {shape}")
            g = c.unsqueeze(0) if c.dim() == 4 else c
            if g.shape[0] == 0 or g.shape[2] != 3:
                raise ConfigError(f"crops[{i}] must hold n >= 1 crops of 3 channels, got shape {tuple(c.shape)}")
            if batch is None:
                batch = g.shape[1]
            if g.shape[1] != batch or batch == 0:
                raise ConfigError(f"crops[{i}] has batch {g.shape[1]} but crops[0] has {batch} (need equal, > 0)")
            if runs and runs[-1][0].shape[-2:] == g.shape[-2:] and runs[-1][0].dtype == g.dtype:
                runs[-1].append(g)
            else:
                runs.append([g])
        return [r[0] if len(r) == 1 else torch.cat(r) for r in runs]

    def features(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        """Trunk features of all crops, ``[V, B, C]`` in crop order (one trunk call per resolution run)."""
        out = []
        for g in self.group_crops(crops):
            n, b = g.shape[:2]
            out.append(self.trunk(g.reshape(n * b, *g.shape[2:])).reshape(n, b, -1))
        return out[0] if len(out) == 1 else torch.cat(out)

    def assignment_features(self, runs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Trunk features ``[n_assign, B, C]`` of the assignment crops, in ``crops_for_assign`` order; each
        resolution run holding one goes through the trunk whole, so BatchNorm sees the batch it sees in
        :meth:`features`."""
        picked: dict[int, torch.Tensor] = {}
        first = 0
        for g in runs:
            n, b = g.shape[:2]
            wanted = [c for c in self.crops_for_assign if first <= c < first + n]
            if wanted:
                out = self.trunk(g.reshape(n * b, *g.shape[2:])).reshape(n, b, -1)
                picked.update({c: out[c - first] for c in wanted})
            first += n
        return torch.stack([picked[c] for c in self.crops_for_assign])

    @contextlib.contextmanager
    def scoring_pass(self) -> Iterator[None]:
        """Forwards inside return :meth:`SwAVHead.assignment_scores` of the assignment crops instead of the loss
        (call them under ``no_grad``): the first pass of an accumulated step (:mod:`bigseer.ssl.accumulate`)."""
        self.head.scoring = True
        try:
            yield
        finally:
            self.head.scoring = False

    def forward(self, crops: Sequence[torch.Tensor]) -> Any:
        """This rank's SwAV loss (0-dim fp32) for a list of crops (inside :meth:`scoring_pass`: the assignment
        scores); all checks precede any collective."""
        runs = self.group_crops(crops)
        num_crops = sum(g.shape[0] for g in runs)
        check_loss_args(num_crops, self.temperature, self.epsilon, self.sinkhorn_iters, self.crops_for_assign)
        if self.head.scoring:  # through the head's __call__: an FSDP unit around it unshards its parameters
            return self.head(self.assignment_features(runs), temperature=self.temperature, epsilon=self.epsilon,
                             sinkhorn_iters=self.sinkhorn_iters)
        feats = self.features(runs)
        return self.head(feats, temperature=self.temperature, epsilon=self.epsilon,
                              sinkhorn_iters=self.sinkhorn_iters, crops_for_assign=self.crops_for_assign)

    def on_after_backward(self, iteration: int) -> None:
        """Drop the prototype gradients while ``iteration < freeze_prototypes_iters``."""
        if iteration < self.freeze_prototypes_iters:
            for p in self.head.prototype_parameters():
                p.grad = None

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """L2-normalise the prototype rows (call after every optimizer step)."""
        self.head.normalize_prototypes()
