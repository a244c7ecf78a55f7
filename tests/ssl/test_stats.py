"""SwAV health statistics (head.last_stats): against a from-scratch float64 reference on one process, on a
forced collapse, and at world size 2 (replicated and K-sharded prototypes) against one process on the
global batch."""

from __future__ import annotations

import math

import pytest
import torch

from bigseer.ssl import SwAVHead
from bigseer.ssl.stats import FIELDS, SwAVStats
from tests.distributed_utils import run_distributed
from tests.numerics import assert_close_f64
from tests.ssl.reference import ref_loss, ref_sinkhorn

pytestmark = pytest.mark.numerics

KW = dict(temperature=0.1, epsilon=0.05, sinkhorn_iters=3)
IN, HID, D, K, V, B_LOCAL = 5, [7], 6, 8, 4, 3


def _feats(v: int, b: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(v, b, IN, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _head(shard: bool = False, **kw) -> SwAVHead:
    torch.manual_seed(0)
    return SwAVHead(IN, HID, D, K, shard_prototypes=shard, **kw).double()


def reference_stats(head: SwAVHead, feats: torch.Tensor, assign=(0, 1), tau: float = 0.1,
                    queue: torch.Tensor | None = None) -> dict[str, float]:
    """Textbook float64 computation of every field on one process (no bigseer.ssl.stats code). ``queue``
    ``[len(assign), L, D]``: past embeddings whose scores join the Sinkhorn input of each assignment crop
    (SwAV's queue); the codes of the batch rows are kept, every statistic stays on the batch rows."""
    v, b, _ = feats.shape
    with torch.no_grad():
        emb = head.embed(feats.reshape(-1, IN)).reshape(v, b, -1)
        w = head.full_prototypes(0).double()
        scores = [e @ w.t() for e in emb]
        probs = torch.cat([torch.softmax(s / tau, dim=1) for s in scores])
        queue_scores = None if queue is None else [q.double() @ w.t() for q in queue]
        codes = torch.cat([ref_sinkhorn(scores[i] if queue is None else torch.cat([scores[i], queue_scores[j]]),
                                        KW["epsilon"], KW["sinkhorn_iters"])[:b] for j, i in enumerate(assign)])
        hard = torch.cat([scores[i].argmax(dim=1) for i in assign])

        def ent(p):
            return float(-(p[p > 0] * p[p > 0].log()).sum())

        k = w.shape[0]
        loss = float(ref_loss(scores, tau, KW["epsilon"], KW["sinkhorn_iters"], assign, queue_scores))
        flat = emb.reshape(-1, emb.shape[-1])
        std = float(flat.std(dim=0, unbiased=False).mean())
        used = torch.bincount(hard, minlength=k)
    return {"loss": loss, "loss_ratio": loss / math.log(k), "pred_entropy": ent(probs.mean(0)),
            "pred_sample_entropy": sum(ent(p) for p in probs) / len(probs),
            "code_entropy": sum(ent(q) for q in codes) / len(codes), "code_mean_entropy": ent(codes.mean(0)),
            "prototypes_used": int((used > 0).sum()), "max_usage": float(used.max()) / len(hard),
            "embed_std": std, "embed_std_ratio": std * math.sqrt(flat.shape[1]), "batch": b}


def _assert_stats(got: dict[str, float], want: dict[str, float], what: str) -> None:
    for name in FIELDS:
        assert_close_f64(torch.tensor(float(got[name])), torch.tensor(float(want[name])), f"{what}: {name}")


def test_stats_equal_reference_one_process():
    head = _head()
    f = _feats(V, 10)
    loss = head(f, crops_for_assign=(0, 2), **KW)
    stats = head.last_stats
    assert isinstance(stats, SwAVStats) and not stats.values.requires_grad
    got = stats.as_dict()
    want = reference_stats(head, f, assign=(0, 2))
    _assert_stats(got, want, "one process")
    assert got["num_prototypes"] == K and got["embed_dim"] == D and got["log_k"] == pytest.approx(math.log(K))
    assert got["loss"] == pytest.approx(float(loss.detach()), rel=1e-12)
    assert stats.loss_ratio == got["loss_ratio"]  # attribute access reads the same vector


def test_forced_collapse_reads_as_collapse():
    """Identical inputs: every embedding equal, one prototype wins every argmax, codes uniform."""
    head = _head()
    f = _feats(1, 1).expand(V, 16, IN).contiguous()
    head(f, **KW)
    s = head.last_stats.as_dict()
    assert s["prototypes_used"] == 1 and s["max_usage"] == 1.0
    assert s["embed_std_ratio"] < 1e-6  # E[x^2] - E[x]^2 in float64: sqrt(eps) ~ 1e-8 of rounding
    assert s["code_entropy"] == pytest.approx(math.log(K), rel=1e-9)  # uniform codes
    healthy = _head()
    healthy(_feats(V, 16, seed=3), **KW)
    h = healthy.last_stats.as_dict()
    assert h["prototypes_used"] > 1 and h["embed_std_ratio"] > 0.3 and h["code_entropy"] < s["code_entropy"]


def test_model_exposes_the_head_stats():
    from bigseer.models import build_regnet
    from bigseer.ssl import SwAVModel

    trunk = build_regnet("regnety_test", zero_init_last=False)
    model = SwAVModel(trunk, SwAVHead(trunk.num_features, [16], 8, K), **KW)
    assert model.last_stats is None
    model([torch.randn(2, 4, 3, 16, 16)])
    assert model.last_stats is model.head.last_stats and model.last_stats.as_dict()["batch"] == 4


def test_stats_off_and_autograd_untouched():
    head = _head(track_stats=False)
    loss = head(_feats(V, 4), **KW)
    assert head.last_stats is None
    tracked = _head()
    loss2 = tracked(_feats(V, 4), **KW)
    assert float(loss.detach()) == float(loss2.detach())
    loss2.backward()  # stats hold no graph: backward is unaffected
    assert all(p.grad is not None for p in tracked.parameters())


def test_multiple_heads_stats_of_head_zero_and_queue_rows_excluded():
    """Every step against the reference, including the one whose Sinkhorn input has queue rows (step 2): the
    reference gets the queue the head held before that step."""
    torch.manual_seed(0)
    head = SwAVHead(IN, HID, D, [K, 5], queue_length=4).double()
    used = []
    for step in range(3):  # the queue fills (4 rows) after two steps of 3; stats stay on batch rows
        f = _feats(V, 3, seed=step)
        before = {k: v.clone() for k, v in head.state_dict().items()}
        queue = head.queue.clone() if head.queue_full() else None
        used.append(queue is not None)
        head(f, **KW)
        got = head.last_stats.as_dict()
        assert got["batch"] == 3 and got["num_prototypes"] == K
        ref = SwAVHead(IN, HID, D, K).double()
        ref.load_state_dict({k: v for k, v in before.items() if not k.startswith("prototypes.1")})
        _assert_stats(got, reference_stats(ref, f, queue=queue), f"step {step}")
    assert used == [False, False, True]


def _worker(rank: int, world: int, state: dict, feats: torch.Tensor) -> dict:
    rows = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    out = {}
    for shard in (False, True):
        head = _head(shard)
        local = dict(state)
        if shard:
            n = K // world
            local["prototypes.0.weight"] = state["prototypes.0.weight"][rank * n:(rank + 1) * n]
        head.load_state_dict(local)
        head(feats[:, rows], crops_for_assign=(1, 3), **KW)
        out[shard] = head.last_stats.as_dict()
    # collapse across ranks: the argmax winner must be counted once over the ranks' shards
    collapsed = feats[:1, :1].expand(V, B_LOCAL, IN).contiguous()
    for shard in (False, True):
        head = _head(shard)
        head(collapsed, **KW)
        out[f"collapsed{shard}"] = head.last_stats.as_dict()
    return out


def test_stats_world_size_two_equal_one_process_on_global_batch():
    world = 2
    feats = _feats(V, B_LOCAL * world, seed=5)
    state = {k: v.clone() for k, v in _head().state_dict().items()}
    ref_head = _head()
    ref_head.load_state_dict(state)
    ref_head(feats, crops_for_assign=(1, 3), **KW)
    want = ref_head.last_stats.as_dict()
    _assert_stats(want, reference_stats(ref_head, feats, assign=(1, 3)), "reference")
    res = run_distributed(_worker, world, args=(state, feats))
    for rank, r in enumerate(res):
        for shard in (False, True):
            _assert_stats(r[shard], want, f"rank {rank} shard={shard}")
            assert r[shard]["batch"] == B_LOCAL * world
        for shard in (False, True):
            c = r[f"collapsed{shard}"]
            assert c["prototypes_used"] == 1 and c["max_usage"] == 1.0 and c["batch"] == B_LOCAL * world
