"""SwAVHead: projection MLP (no BatchNorm), L2-normalised embedding, prototype matrices, optional queue.

Parameter keys: ``projection.{2i}.weight/bias`` (Linear layers, ReLU between them) and
``prototypes.{h}.weight`` (``[K_h, out_dim]``, or ``[K_h / W, out_dim]`` per rank when sharded: rank r
holds rows ``r*K_h/W .. (r+1)*K_h/W``). Queue buffers are not saved in the state dict.

K-sharded prototypes (``shard_prototypes=True``): every rank stores K/W rows. The embeddings of all crops
are all-gathered (autograd-aware; backward all-reduces and keeps the local slice), each rank scores the
global batch against its shard, Sinkhorn's sums over K and the softmax's logsumexp are all-reduced, and
the per-sample cross-entropies are summed over shards before each rank takes its own samples' mean. So
every rank's returned loss is its local-sample loss, the same value as without sharding.
Gradient convention: back-propagating the local losses yields, by the SPMD rule of the collectives, the
gradient of ``sum_r loss_r`` on every tensor. Replicated parameters are then averaged over ranks by the
data-parallel wrapper (giving the gradient of the global mean loss); sharded prototype parameters are
skipped by the wrapper (they carry ``_bigseer_sharded = True`` and ``_bigseer_shard_group``), so their
gradient is scaled by ``1/W`` in the backward (``scale_grad``) to be the gradient of the global mean loss directly.

Health signals: with ``track_stats=True`` (default) every forward stores ``head.last_stats``, a
:class:`bigseer.ssl.stats.SwAVStats` of prototype head 0 over the global batch, computed from the loss's own
tensors (one small collective; see :mod:`bigseer.ssl.stats`). ``track_stats`` must be equal on all ranks.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Literal, Sequence, cast

import torch
import torch.nn.functional as F
from torch import nn

from bigseer.distributed import Group, all_gather_cat, get_rank, get_world_size
from bigseer.errors import ConfigError
from bigseer.models.init import RowsOf, default_seed, fill_rows_, init_param_, uniform, unit_rows, whole
from bigseer.ssl.collectives import all_gather_stack, scale_grad
from bigseer.ssl.stats import SwAVStats, swav_stats
from bigseer.ssl.swav import check_loss_args, swav_objective

Split = Literal["batch", "prototypes", "none"]


def _local_rows(w: torch.Tensor) -> torch.Tensor:
    """The locally stored rows of a (possibly DTensor, dim-0 sharded) weight."""
    return w.to_local() if hasattr(w, "to_local") else w


class SwAVHead(nn.Module):
    """Projection MLP + L2 normalisation + prototypes (see module docstring).

    Args:
        in_dim: trunk feature width (e.g. 10444 for RG256).
        hidden_dims: widths of the hidden Linear+ReLU layers (may be empty; SEER RG256: [8192, 8192]).
        out_dim: embedding width (SEER: 256).
        num_prototypes: K, or a list of K per prototype head (losses are averaged over heads).
        shard_prototypes: store K/W rows per rank of ``group`` (K % W != 0 is a ConfigError).
        queue_length: per-rank queue of past embeddings for Sinkhorn (0 = off); used once full.
        queue_crops: how many assignment crops the queue stores (must equal len(crops_for_assign)).
        group: process group for sharding and Sinkhorn (None = default group / one process).
        track_stats: store :class:`SwAVStats` of every forward in ``last_stats`` (same on every rank).
    """

    queue: torch.Tensor  # buffers, registered by register_buffer (declared for the type checker)
    queue_filled: torch.Tensor

    def __init__(self, in_dim: int, hidden_dims: Sequence[int] = (), out_dim: int = 128,
                 num_prototypes: int | Sequence[int] = 3000, *, shard_prototypes: bool = False,
                 queue_length: int = 0, queue_crops: int = 2, group: Group = None,
                 track_stats: bool = True) -> None:
        super().__init__()
        ks = [num_prototypes] if isinstance(num_prototypes, int) else list(num_prototypes)
        dims = [in_dim, *hidden_dims, out_dim]
        if any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in dims):
            raise ConfigError(f"SwAVHead dims must be positive integers, got in_dim={in_dim}, "
                              f"hidden_dims={list(hidden_dims)}, out_dim={out_dim}")
        if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k <= 0 for k in ks):
            raise ConfigError(f"SwAVHead num_prototypes must be a positive int or a non-empty list of them, "
                              f"got {num_prototypes!r}")
        if not isinstance(queue_length, int) or queue_length < 0 or not isinstance(queue_crops, int) \
                or queue_crops < 1:
            raise ConfigError(f"SwAVHead queue_length must be >= 0 and queue_crops >= 1, got "
                              f"{queue_length!r}, {queue_crops!r}")
        world = get_world_size(group) if shard_prototypes else 1
        bad = [k for k in ks if k % world]
        if bad:
            raise ConfigError(f"shard_prototypes needs every prototype count divisible by the world size "
                              f"{world}; got num_prototypes={ks}")
        self.in_dim, self.hidden_dims, self.out_dim = in_dim, list(hidden_dims), out_dim
        self.num_prototypes = ks
        self.shard_prototypes = bool(shard_prototypes)
        self.shard_world = world
        self.shard_rank = get_rank(group) if shard_prototypes else 0
        self.group = group
        self.queue_length = queue_length
        self.queue_crops = queue_crops
        self.track_stats = bool(track_stats)
        self.last_stats: SwAVStats | None = None
        self.given_codes: list[list[torch.Tensor]] | None = None  # see codes_given
        self.scoring = False  # forward returns assignment_scores (SwAVModel.scoring_pass)

        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.ReLU(inplace=True))
        self.projection = nn.Sequential(*layers)

        self.prototypes = nn.ModuleList()
        for k in ks:
            lin = nn.Linear(out_dim, k // world, bias=False)  # this rank's rows when sharded
            if self.shard_prototypes:
                lin.weight._bigseer_sharded = True  # type: ignore[attr-defined]
                lin.weight._bigseer_shard_group = group  # type: ignore[attr-defined]
            self.prototypes.append(lin)

        self.register_buffer("queue", torch.zeros(queue_crops if queue_length else 0, queue_length, out_dim),
                             persistent=False)
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long), persistent=False)
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, seed: int | None = None, rows_of: RowsOf = whole) -> "SwAVHead":
        """Projection: torch's Linear default (uniform +-1/sqrt(fan_in)); prototypes: uniform +-1/sqrt(D),
        rows L2-normalised; queue emptied. Values are a function of (seed, name, row)
        (:mod:`bigseer.models.init`): a sharded head fills rows ``K/W * rank ..`` of the full matrices, so
        sharded, replicated and FSDP-sharded heads start identical. Returns self."""
        seed = default_seed() if seed is None else seed
        for name, m in self.projection.named_modules():
            if isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.in_features)
                init_param_(m.weight, f"projection.{name}.weight", seed, uniform(bound), rows_of)
                init_param_(m.bias, f"projection.{name}.bias", seed, uniform(bound), rows_of)
        for h, lin in enumerate(self._prototype_layers()):
            w = lin.weight
            draw = unit_rows(1.0 / math.sqrt(self.out_dim))
            if self.shard_prototypes:  # this rank holds rows shard_rank * K/W .. of the full matrix
                fill_rows_(w, self.shard_rank * w.shape[0], (self.num_prototypes[h], self.out_dim), seed,
                           f"prototypes.{h}.weight", draw)
            else:
                init_param_(w, f"prototypes.{h}.weight", seed, draw, rows_of)
        self.reset_queue()
        return self

    def set_group(self, group: Group) -> None:
        """Use ``group`` for collectives; with sharded prototypes this rank's position must not change."""
        if self.shard_prototypes and (get_world_size(group), get_rank(group)) != (self.shard_world, self.shard_rank):
            raise ConfigError(f"SwAVHead prototypes are sharded over {self.shard_world} ranks (this is rank "
                              f"{self.shard_rank}); cannot switch to a group where it is rank {get_rank(group)} of "
                              f"{get_world_size(group)}")
        self.group = group
        if self.shard_prototypes:
            for w in self.prototype_parameters():
                w._bigseer_shard_group = group  # type: ignore[attr-defined]

    def _prototype_layers(self) -> list[nn.Linear]:
        return [cast(nn.Linear, m) for m in self.prototypes]

    def prototype_parameters(self) -> list[nn.Parameter]:
        """The prototype weights, one per prototype head."""
        return [cast(nn.Parameter, p.weight) for p in self._prototype_layers()]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[N, in_dim]`` -> L2-normalised embeddings ``[N, out_dim]`` (fp32; fp64 for an fp64 head).

        Not a forward: under FSDP the head's parameters must be unsharded by the caller."""
        z = self.projection(x)
        with torch.autocast(z.device.type, enabled=False):
            return F.normalize(z if z.dtype == torch.float64 else z.float(), dim=1)

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """L2-normalise every prototype row in place (row-wise, so a dim-0 sharded DTensor stays local)."""
        for w in self.prototype_parameters():
            local = _local_rows(w)
            local.div_(local.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def full_prototypes(self, head: int = 0) -> torch.Tensor:
        """The complete ``[K, out_dim]`` matrix of prototype head ``head`` (all-gathered when sharded)."""
        w = self._prototype_layers()[head].weight.detach()
        if hasattr(w, "full_tensor"):  # DTensor (e.g. FSDP2-sharded replicated prototypes)
            return w.full_tensor()
        return all_gather_cat(w, self.group) if self.shard_prototypes else w.clone()

    @torch.no_grad()
    def reset_queue(self) -> None:
        """Empty the queue (it is used again only once full)."""
        self.queue.zero_()
        self.queue_filled.zero_()

    def queue_full(self) -> bool:
        """True when the queue is enabled and holds ``queue_length`` embeddings per assignment crop."""
        return self.queue_length > 0 and int(self.queue_filled) >= self.queue_length

    def check_features(self, feats: torch.Tensor) -> None:
        """Raise ConfigError unless ``feats`` is ``[V, B, in_dim]`` with V >= 2 and B > 0."""
        if not isinstance(feats, torch.Tensor) or feats.dim() != 3 or feats.shape[-1] != self.in_dim:
            shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
            raise ConfigError(f"SwAVHead expects features [crops, B, {self.in_dim}], got {shape}")
        if feats.shape[1] == 0:
            raise ConfigError("SwAVHead got an empty batch (B = 0)")

    def forward(self, feats: torch.Tensor, *, temperature: float, epsilon: float, sinkhorn_iters: int,
                crops_for_assign: Sequence[int] = (0, 1)) -> Any:
        """SwAV loss of this rank's samples from trunk features ``[V, B, in_dim]`` (crops in order).

        The whole loss is computed inside ``forward`` so that an FSDP unit around the head keeps its
        parameters unsharded throughout. Averaged over prototype heads. In training mode the queue (if any)
        is updated after use. All checks happen before any collective. With ``scoring`` set, ``feats`` are the
        assignment crops' and the result is :meth:`assignment_scores`.
        """
        if self.scoring:
            return self.assignment_scores(feats)
        self.check_features(feats)
        num_crops, batch, _ = feats.shape
        assign = check_loss_args(num_crops, temperature, epsilon, sinkhorn_iters, crops_for_assign)
        if self.queue_length and len(assign) != self.queue_crops:
            raise ConfigError(f"SwAVHead queue stores {self.queue_crops} assignment crops but crops_for_assign is "
                              f"{assign}")
        emb = self.embed(feats.reshape(num_crops * batch, self.in_dim)).reshape(num_crops, batch, self.out_dim)
        given = self.given_codes
        emb_all, rows, split, queue = self._global_view(emb, with_queue=given is None)
        losses = []
        capture: dict | None = {} if self.track_stats else None
        for h, proto in enumerate(self._prototype_layers()):
            w = proto.weight
            if self.shard_prototypes and self.shard_world > 1:
                w = scale_grad(w, 1.0 / self.shard_world)
            with torch.autocast(emb.device.type, enabled=False):
                w = w.float() if emb_all.dtype != torch.float64 else w.double()
                n = emb_all.shape[1]
                scores = (emb_all.reshape(num_crops * n, self.out_dim) @ w.t()).reshape(num_crops, n, -1)
                queue_scores = [queue[j].to(w.dtype) @ w.detach().t() for j in range(len(assign))] \
                    if queue is not None else None
            losses.append(swav_objective(list(scores.unbind(0)), float(temperature), float(epsilon),
                                         sinkhorn_iters, assign, self.group, split, queue_scores, rows,
                                         capture if h == 0 else None, given[h] if given is not None else None))
            if h == 0 and capture is not None:
                self.last_stats = swav_stats(capture["logp"], [scores[i] for i in assign], capture["codes"],
                                             capture["per_sample"], emb_all, self.num_prototypes[0],
                                             self.group, split)
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
        if self.training and self.queue_length and given is None:
            self._push_queue(emb[list(assign)].detach())
        return loss

    def _global_view(self, emb: torch.Tensor, with_queue: bool = True
                     ) -> tuple[torch.Tensor, slice | None, Split, torch.Tensor | None]:
        """(the embeddings the scores are taken of, this rank's rows in them, the Sinkhorn split, the queue when
        full and wanted): with sharded prototypes the whole global batch (all-gathered) and the union of the
        queues."""
        queue = self.queue if with_queue and self.queue_full() else None
        if not (self.shard_prototypes and self.shard_world > 1):
            return emb, None, "batch", queue
        num_crops, batch, _ = emb.shape
        gathered = all_gather_stack(emb, self.group)  # [W, V, B, D]
        emb_all = gathered.transpose(0, 1).reshape(num_crops, self.shard_world * batch, self.out_dim)
        rows = slice(self.shard_rank * batch, (self.shard_rank + 1) * batch)
        if queue is not None:
            queue = all_gather_cat(self.queue, self.group, dim=1)
        return emb_all, rows, "prototypes", queue

    @torch.no_grad()
    def assignment_scores(self, feats: torch.Tensor) -> dict[str, Any]:
        """The inputs of the codes, for gradient accumulation (:mod:`bigseer.ssl.accumulate`): from the trunk
        features ``[n_assign, B, in_dim]`` of the assignment crops, ``scores[h][j]`` (prototype head ``h``,
        assignment crop ``j``: the rows Sinkhorn sees, fp32), ``queue[h][j]`` (the queue's scores; empty lists
        while the queue is not full), ``emb`` (this rank's embeddings, for the queue) and ``split``. No update
        of any state."""
        self.check_features(feats)
        n_assign, batch, _ = feats.shape
        emb = self.embed(feats.reshape(n_assign * batch, self.in_dim)).reshape(n_assign, batch, self.out_dim)
        emb_all, _, split, queue = self._global_view(emb)
        scores, queue_scores = [], []
        for proto in self._prototype_layers():
            with torch.autocast(emb.device.type, enabled=False):
                w = proto.weight.float() if emb_all.dtype != torch.float64 else proto.weight.double()
                scores.append([emb_all[j] @ w.t() for j in range(n_assign)])
                queue_scores.append([queue[j].to(w.dtype) @ w.t() for j in range(n_assign)] if queue is not None
                                    else [])
        return {"scores": scores, "queue": queue_scores, "emb": emb, "split": split}

    @contextlib.contextmanager
    def codes_given(self, codes: list[list[torch.Tensor]]) -> Iterator[None]:
        """Forwards inside use ``codes[h][j]`` (computed over a larger batch) instead of Sinkhorn, and leave the
        queue alone (the caller pushes the whole accumulated step)."""
        self.given_codes = codes
        try:
            yield
        finally:
            self.given_codes = None

    @torch.no_grad()
    def push_queue(self, new: torch.Tensor) -> None:
        """Put ``new`` ``[n_assign, rows, D]`` at the front of the queue (newest first)."""
        self._push_queue(new)

    @torch.no_grad()
    def _push_queue(self, new: torch.Tensor) -> None:
        """Shift the queue by the batch and put ``new`` ``[n_assign, B, D]`` in front (newest first)."""
        length = self.queue_length
        self.queue.copy_(torch.cat([new.to(self.queue.dtype), self.queue], dim=1)[:, :length])
        self.queue_filled.fill_(min(length, int(self.queue_filled) + new.shape[1]))
