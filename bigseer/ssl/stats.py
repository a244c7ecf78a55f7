"""Health signals of one SwAV forward, from tensors the loss already computed (no extra forward pass).

:func:`swav_stats` turns the predictions ``log softmax(scores / T)`` of every crop, the Sinkhorn codes of
the assignment crops, the per-sample losses and the L2-normalised embeddings into a :class:`SwAVStats`
over the *global* batch. Everything runs under ``no_grad`` in float64 with autocast off.

Collectives (same calls, same order on every rank of ``group``; identity with one process):

- ``split="batch"`` (replicated prototypes; ranks hold disjoint samples): one ``all_reduce`` (sum) of a
  ``3K + 2D + 4`` vector of per-rank sums.
- ``split="prototypes"`` (K-sharded; every rank holds the whole batch, K/W prototype columns): one
  ``all_gather`` of ``[3 K/W + 2 + 2 R]`` per rank (column sums, entropy partial sums, and each row's
  local max score and argmax, so the global argmax is resolved without a second collective; ties go to
  the lowest rank, i.e. the lowest global index, as ``torch.argmax`` on the full matrix does).

After the collective every rank holds identical numbers, so decisions taken from them (e.g. stopping a
collapsed run) are taken on every rank together.

Reading the signals (K prototypes, D embedding dims): SwAV's trivial fixed point has ``loss_ratio`` = 1
(loss = ln K), uniform codes (``code_entropy`` = ln K), few prototypes winning the argmax, and often
``embed_std_ratio`` near 0 (all embeddings equal). A learning run has ``loss_ratio`` well below 1, peaked
codes and many prototypes in use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence, cast

import torch

from bigseer.distributed import Group, all_gather_cat, all_reduce_sum, get_world_size

# Order of the values in SwAVStats.values.
FIELDS = ("loss", "loss_ratio", "pred_entropy", "pred_sample_entropy", "code_entropy", "code_mean_entropy",
          "prototypes_used", "max_usage", "embed_std", "embed_std_ratio", "batch")


@dataclass(frozen=True)
class SwAVStats:
    """Health of one SwAV forward over the global batch (prototype head 0); detached, no autograd.

    ``values`` is a float64 tensor on the scores' device in :data:`FIELDS` order, so reading the stats
    costs one device sync (:meth:`as_dict`) and only when wanted. Fields (entropies in nats):

    - ``loss``: mean SwAV loss of head 0 over the global batch; ``loss_ratio`` = loss / ln K.
    - ``pred_entropy``: entropy of the batch-mean prediction ``softmax(scores / T)`` (all crops);
      ``pred_sample_entropy``: mean entropy of the per-sample predictions.
    - ``code_entropy``: mean entropy of the per-sample Sinkhorn codes of the assignment crops
      (ln K = uniform codes, no information); ``code_mean_entropy``: entropy of the batch-mean code
      (ln K when Sinkhorn equipartitions; lower means it did not, e.g. epsilon too small or too few iterations).
    - ``prototypes_used``: prototypes that win the argmax of at least one assignment-crop score;
      ``max_usage``: fraction of assignment-crop rows won by the most used prototype.
    - ``embed_std``: mean over the D dims of the per-dim std of the normalised embeddings (all crops);
      ``embed_std_ratio`` = embed_std x sqrt(D) (about 1 for directions spread over the sphere, 0 = collapsed).
    - ``batch``: samples in the global batch.
    """

    values: torch.Tensor
    num_prototypes: int
    embed_dim: int

    @property
    def log_k(self) -> float:
        return math.log(self.num_prototypes)

    def as_dict(self) -> dict[str, float]:
        """All fields as Python floats (plus ``num_prototypes``, ``embed_dim``, ``log_k``); one sync."""
        out = dict(zip(FIELDS, self.values.detach().cpu().tolist()))
        out["prototypes_used"] = int(round(out["prototypes_used"]))
        out["batch"] = int(round(out["batch"]))
        out.update(num_prototypes=self.num_prototypes, embed_dim=self.embed_dim, log_k=self.log_k)
        return out

    def __getattr__(self, name: str) -> float:
        if name in FIELDS:
            return self.as_dict()[name]
        raise AttributeError(name)


def _total(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """``sum(terms)`` of a non-empty sequence of tensors (a tensor, not the int start)."""
    return cast(torch.Tensor, sum(terms))


def _entropy_rows(p: torch.Tensor, logp: torch.Tensor | None = None) -> torch.Tensor:
    """``-sum_k p log p`` per row (0 log 0 = 0)."""
    if logp is None:
        return -torch.special.xlogy(p, p).sum(dim=1)
    return -(p * logp).sum(dim=1)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(p, p).sum()


def _gather_rows(t: torch.Tensor, group: Group) -> torch.Tensor:
    """``[W, *t.shape]``: every rank's ``t`` in rank order (explicit collective; world size 1 works)."""
    return all_gather_cat(t.unsqueeze(0), group)


def _finalize(pred_sum: torch.Tensor, code_sum: torch.Tensor, counts: torch.Tensor, pred_ent: torch.Tensor,
              code_ent: torch.Tensor, loss_sum: torch.Tensor, n: torch.Tensor, emb_sum: torch.Tensor,
              emb_sq: torch.Tensor, num_crops: int, num_assign: int) -> torch.Tensor:
    """Global sums -> the :data:`FIELDS` vector (no collectives)."""
    k, d = pred_sum.shape[0], emb_sum.shape[0]
    n_pred, n_code = n * num_crops, n * num_assign
    p = pred_sum / n_pred
    mean = emb_sum / n_pred
    std = (emb_sq / n_pred - mean * mean).clamp_min(0).sqrt().mean()
    loss = loss_sum / n
    vals = [loss, loss / math.log(k) if k > 1 else loss * 0, _entropy(p), pred_ent / n_pred, code_ent / n_code,
            _entropy(code_sum / n_code), (counts > 0).sum().to(p.dtype), counts.max() / n_code, std,
            std * math.sqrt(d), n]
    return torch.stack([v.to(p.dtype).reshape(()) for v in vals])


def swav_stats(logp: Sequence[torch.Tensor], scores_assign: Sequence[torch.Tensor], codes: Sequence[torch.Tensor],
               per_sample: torch.Tensor, emb: torch.Tensor, num_prototypes: int, group: Group,
               split: Literal["batch", "prototypes", "none"]) -> SwAVStats:
    """Stats of one SwAV forward (see the module docstring for the collectives).

    ``logp[v]``: ``[n, K_local]`` log predictions of crop v; ``scores_assign[j]`` / ``codes[j]``: scores and
    Sinkhorn codes ``[n, K_local]`` of the j-th assignment crop (batch rows only, no queue rows);
    ``per_sample``: ``[n]`` per-sample losses; ``emb``: ``[V, n, D]`` normalised embeddings. With
    ``split="batch"`` the ``n`` rows are this rank's samples and K_local = K; with ``"prototypes"`` they are
    the global batch and K_local = K / W (this rank's columns, in rank order).
    """
    with torch.no_grad(), torch.autocast(per_sample.device.type, enabled=False):
        f64 = torch.float64
        lp = [x.detach().to(f64) for x in logp]
        sa = [x.detach().to(f64) for x in scores_assign]
        qs = [x.detach().to(f64) for x in codes]
        e = emb.detach().to(f64).reshape(-1, emb.shape[-1])
        probs = [x.exp() for x in lp]
        pred_sum = _total(p.sum(0) for p in probs)
        pred_ent = _total(_entropy_rows(p, x).sum() for p, x in zip(probs, lp))
        code_sum = _total(q.sum(0) for q in qs)
        code_ent = _total(_entropy_rows(q).sum() for q in qs)
        rows = torch.cat(sa)  # [A n, K_local]
        n = torch.tensor(float(per_sample.shape[0]), dtype=f64, device=per_sample.device)
        loss_sum = per_sample.detach().to(f64).sum()
        if split == "prototypes" and get_world_size(group) > 1:
            return _sharded(pred_sum, code_sum, pred_ent, code_ent, rows, loss_sum, n, e, num_prototypes,
                            len(lp), len(qs), group)
        k = rows.shape[1]
        counts = torch.bincount(rows.argmax(dim=1), minlength=k).to(f64)
        packed = torch.cat([pred_sum, code_sum, counts, e.sum(0), (e * e).sum(0),
                            torch.stack([pred_ent, code_ent, loss_sum, n])])
        if split == "batch":
            packed = all_reduce_sum(packed, group)
        d = e.shape[1]
        pred_sum, code_sum, counts = packed[:k], packed[k:2 * k], packed[2 * k:3 * k]
        emb_sum, emb_sq = packed[3 * k:3 * k + d], packed[3 * k + d:3 * k + 2 * d]
        pred_ent, code_ent, loss_sum, n = packed[3 * k + 2 * d:].unbind()
        vals = _finalize(pred_sum, code_sum, counts, pred_ent, code_ent, loss_sum, n, emb_sum, emb_sq,
                         len(lp), len(qs))
    return SwAVStats(vals, num_prototypes, e.shape[1])


def _sharded(pred_sum: torch.Tensor, code_sum: torch.Tensor, pred_ent: torch.Tensor, code_ent: torch.Tensor,
             rows: torch.Tensor, loss_sum: torch.Tensor, n: torch.Tensor, e: torch.Tensor, num_prototypes: int,
             num_crops: int, num_assign: int, group: Group) -> SwAVStats:
    """K-sharded prototypes: one all-gather of column sums, entropy partials and per-row local max/argmax."""
    k_local = rows.shape[1]
    row_max, row_arg = rows.max(dim=1)
    local = torch.cat([pred_sum, code_sum, torch.stack([pred_ent, code_ent]), row_max, row_arg.to(rows.dtype)])
    allr = _gather_rows(local, group)  # [W, 2 K/W + 2 + 2 R]
    w, r = allr.shape[0], rows.shape[0]
    pred_full = allr[:, :k_local].reshape(-1)
    code_full = allr[:, k_local:2 * k_local].reshape(-1)
    pred_ent = allr[:, 2 * k_local].sum()
    code_ent = allr[:, 2 * k_local + 1].sum()
    maxes = allr[:, 2 * k_local + 2:2 * k_local + 2 + r]
    args = allr[:, 2 * k_local + 2 + r:]
    winner = maxes.argmax(dim=0)  # first rank holding the row's max: lowest global index on ties
    gidx = winner * k_local + args.gather(0, winner[None]).squeeze(0).round().long()
    counts = torch.bincount(gidx, minlength=w * k_local).to(rows.dtype)
    # the per-sample losses and embeddings already cover the global batch on every rank
    vals = _finalize(pred_full, code_full, counts, pred_ent, code_ent, loss_sum, n, e.sum(0), (e * e).sum(0),
                     num_crops, num_assign)
    return SwAVStats(vals, num_prototypes, e.shape[1])
