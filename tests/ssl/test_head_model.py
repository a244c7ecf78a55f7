"""SwAVHead / SwAVModel on one process: crop batching, queue, freezing, renormalisation, heads, errors."""

import copy

import pytest
import torch

import bigseer.ssl.swav as swav_mod
from bigseer.errors import ConfigError
from bigseer.models import build_regnet
from bigseer.ssl import SwAVHead, SwAVModel, swav_loss
from tests.ssl.reference import ref_loss

pytestmark = pytest.mark.numerics  # re-run by .ci/run under another kernel dispatch

KW = dict(temperature=0.1, epsilon=0.05, sinkhorn_iters=3)


def _feats(v, b, c, seed=0):
    return torch.randn(v, b, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_model_one_trunk_call_per_resolution_run_and_state_dict():
    trunk = build_regnet("regnety_test", zero_init_last=False)
    head = SwAVHead(trunk.num_features, [16], 8, 12)
    # float64: the grouped call runs other (batch-size dependent) conv kernels than the single crops
    model = SwAVModel(trunk, head, crops_for_assign=(0, 1)).eval().double()
    calls = []
    trunk.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    b = 2
    crops = [torch.randn(*s, dtype=torch.float64) for s in
             ((b, 3, 32, 32), (2, b, 3, 32, 32), (b, 3, 16, 16), (3, b, 3, 16, 16), (b, 3, 32, 32))]
    loss = model(crops)
    assert calls == [(3 * b, 3, 32, 32), (4 * b, 3, 16, 16), (b, 3, 32, 32)]
    assert loss.dim() == 0 and loss.dtype == torch.float64
    # same loss as running every crop separately (eval-mode BN is per sample)
    singles = [c for g in crops for c in (g.unbind(0) if g.dim() == 5 else [g])]
    with torch.no_grad():
        feats = torch.stack([trunk(c) for c in singles])
        emb = head.embed(feats.reshape(-1, feats.shape[-1])).reshape(8, b, -1)
        scores = [e @ head.prototypes[0].weight.t() for e in emb]
        torch.testing.assert_close(loss.detach(), swav_loss(scores, 0.1, 0.05, 3), rtol=1e-10, atol=0)
    keys = list(model.state_dict())
    assert all(k.startswith(("trunk.", "head.")) for k in keys)
    assert "trunk.stem.conv.weight" in keys and "head.prototypes.0.weight" in keys
    assert not any("queue" in k for k in keys)


def test_queue_start_and_shift():
    b, k, d = 3, 10, 6
    head = SwAVHead(5, [7], d, k, queue_length=2 * b).double()
    plain = copy.deepcopy(head)
    plain.queue_length = 0
    emb_hist = []
    for step in range(4):
        f = _feats(3, b, 5, seed=step)
        with torch.no_grad():
            emb = head.embed(f.reshape(-1, 5)).reshape(3, b, d)
        queue_before = head.queue.clone()
        full = head.queue_full()
        loss = head(f, crops_for_assign=(0, 1), **KW)
        scores = [e @ head.prototypes[0].weight.t() for e in emb]
        if step < 2:  # not full yet: the queue is ignored
            assert not full
            torch.testing.assert_close(loss, plain(f, crops_for_assign=(0, 1), **KW))
        else:  # full: Sinkhorn also sees the queued embeddings, scored with the current prototypes
            assert full
            qs = [queue_before[j] @ head.prototypes[0].weight.t() for j in range(2)]
            torch.testing.assert_close(loss, ref_loss(scores, 0.1, 0.05, 3, (0, 1), queue=qs))
            assert (loss - ref_loss(scores, 0.1, 0.05, 3, (0, 1))).abs() > 1e-6  # the queue mattered
        emb_hist.append(emb[:2])
        # newest batch first, then the previous one
        torch.testing.assert_close(head.queue[:, :b], emb[:2])
        if step >= 1:
            torch.testing.assert_close(head.queue[:, b:], emb_hist[-2])
    # eval mode does not touch the queue; reset empties it
    q = head.queue.clone()
    head.eval()(_feats(3, b, 5, seed=9), **KW)
    torch.testing.assert_close(head.queue, q)
    head.reset_queue()
    assert not head.queue_full() and head.queue.abs().sum() == 0


def test_freeze_and_normalize_prototypes():
    trunk = build_regnet("regnety_test")
    head = SwAVHead(trunk.num_features, [], 8, [6, 4])
    model = SwAVModel(trunk, head, freeze_prototypes_iters=2)
    crops = [torch.randn(2, 2, 3, 16, 16)]
    for it in range(3):
        model.zero_grad(set_to_none=True)
        model(crops).backward()
        model.on_after_backward(it)
        frozen = it < 2
        assert all((p.grad is None) == frozen for p in head.prototype_parameters())
        assert head.projection[0].weight.grad is not None
    # after an optimizer-like step rows are not unit; normalize_prototypes fixes that, directions kept
    with torch.no_grad():
        for p in head.prototype_parameters():
            p.mul_(torch.linspace(0.5, 3.0, p.shape[0])[:, None])
    before = [p.detach().clone() for p in head.prototype_parameters()]
    model.normalize_prototypes()
    for p, b in zip(head.prototype_parameters(), before):
        torch.testing.assert_close(p.norm(dim=1), torch.ones(p.shape[0]))
        torch.testing.assert_close(p, b / b.norm(dim=1, keepdim=True))
        assert not p.requires_grad or p.grad_fn is None


def test_multiple_heads_average_and_sharded_flag_at_world_size_one():
    head = SwAVHead(5, [4], 6, [8, 10]).double()
    f = _feats(4, 3, 5)
    loss = head(f, crops_for_assign=(0, 1), **KW)
    emb = head.embed(f.reshape(-1, 5)).reshape(4, 3, 6)
    per = [ref_loss([e @ p.weight.t() for e in emb], 0.1, 0.05, 3) for p in head.prototypes]
    torch.testing.assert_close(loss, (per[0] + per[1]) / 2)
    torch.manual_seed(1)
    sharded = SwAVHead(5, [4], 6, [8, 10], shard_prototypes=True).double()
    torch.manual_seed(1)
    replicated = SwAVHead(5, [4], 6, [8, 10]).double()
    assert all(getattr(p, "_bigseer_sharded", False) for p in sharded.prototype_parameters())
    assert not any(hasattr(p, "_bigseer_sharded") for p in replicated.prototype_parameters())
    torch.testing.assert_close(sharded(f, **KW), replicated(f, **KW))
    torch.testing.assert_close(sharded.full_prototypes(1), replicated.prototypes[1].weight.detach())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_model_autocast_scores_and_sinkhorn_fp32(dtype, monkeypatch):
    seen = []
    real = swav_mod.sinkhorn_codes
    monkeypatch.setattr(swav_mod, "sinkhorn_codes", lambda s, *a: seen.append(s.dtype) or real(s, *a))
    trunk = build_regnet("regnety_test")
    model = SwAVModel(trunk, SwAVHead(trunk.num_features, [16], 8, 16384), epsilon=0.03)
    with torch.autocast("cpu", dtype=dtype):
        loss = model([torch.randn(2, 4, 3, 16, 16), torch.randn(2, 4, 3, 8, 8)])
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert seen == [torch.float32, torch.float32]
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.head.parameters())


@pytest.mark.parametrize("crops, match", [
    ([torch.zeros(2, 3, 8, 8), torch.zeros(3, 3, 8, 8)], "batch"),
    ([torch.zeros(0, 3, 8, 8), torch.zeros(0, 3, 8, 8)], "batch"),
    ([torch.zeros(2, 3, 8, 8)], "at least 2 crops"),
    ([torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)], "3 channels"),
    ([torch.zeros(3, 8, 8)], r"\[B,3,H,W\]"),
    ([], "non-empty"),
])
def test_model_bad_crops(crops, match):
    trunk = build_regnet("regnety_test")
    model = SwAVModel(trunk, SwAVHead(trunk.num_features, [], 8, 6))
    with pytest.raises(ConfigError, match=match):
        model(crops)


def test_bad_settings():
    trunk = build_regnet("regnety_test")
    with pytest.raises(ConfigError, match="out of range"):
        SwAVModel(trunk, SwAVHead(48, [], 8, 6), crops_for_assign=(0, 3))([torch.zeros(3, 2, 3, 8, 8)])
    with pytest.raises(ConfigError, match="out of range"):
        SwAVModel(trunk, SwAVHead(48, [], 8, 6), crops_for_assign=(-1,))
    with pytest.raises(ConfigError, match="queue"):
        SwAVModel(trunk, SwAVHead(48, [], 8, 6, queue_length=4, queue_crops=2), crops_for_assign=(0,))
    with pytest.raises(ConfigError, match="freeze"):
        SwAVModel(trunk, SwAVHead(48, [], 8, 6), freeze_prototypes_iters=-1)
    with pytest.raises(ConfigError, match="epsilon"):
        SwAVModel(trunk, SwAVHead(48, [], 8, 6), epsilon=0)
    with pytest.raises(ConfigError, match="num_prototypes"):
        SwAVHead(48, [], 8, [])
    with pytest.raises(ConfigError, match="dims"):
        SwAVHead(48, [0], 8, 6)
    with pytest.raises(ConfigError, match=r"features \[crops, B, 48\]"):
        SwAVHead(48, [], 8, 6)(torch.zeros(2, 3, 47), **KW)
