"""SwAV at world size 2 and 4 (gloo ranks) against the one-process float64 computation on the whole batch.

One spawn per world size; each rank runs every check and returns its numbers, compared here:
Sinkhorn codes and marginals, swav_loss values and gradients, SwAVModel with replicated and K-sharded
prototypes (loss, trunk/MLP gradients averaged over ranks, prototype gradients), the queue across
ranks, FSDP2 (head as its own unit) gradients and DTensor row normalisation, and argument errors
raised before any collective.
"""

from __future__ import annotations


import pytest
import torch
import torch.distributed as dist

from bigseer.errors import ConfigError
from bigseer.models import build_regnet
from bigseer.ssl import SwAVHead, SwAVModel, sinkhorn, swav_loss
from tests.distributed_utils import run_distributed
from tests.ssl.reference import random_scores, ref_loss, ref_sinkhorn

pytestmark = [pytest.mark.numerics, pytest.mark.slow]  # re-run by .ci/run under another kernel dispatch

B_LOCAL, K, K_MODEL, STEPS = 3, 12, 8, 3
KW = dict(temperature=0.1, epsilon=0.05, sinkhorn_iters=3)


def _build_model(shard: bool, queue_length: int = 0) -> SwAVModel:
    torch.manual_seed(0)
    trunk = build_regnet("regnety_test", zero_init_last=False)
    head = SwAVHead(trunk.num_features, [16], 8, K_MODEL, shard_prototypes=shard, queue_length=queue_length)
    return SwAVModel(trunk, head, **KW)


def _load(model: SwAVModel, state: dict, rank: int, world: int) -> None:
    state = dict(state)
    if model.head.shard_prototypes:
        rows = K_MODEL // world
        state["head.prototypes.0.weight"] = state["head.prototypes.0.weight"][rank * rows:(rank + 1) * rows]
    model.load_state_dict({k: v.float() for k, v in state.items()})


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _errors_before_collectives(rank: int, world: int) -> list[str]:
    """Bad input on every rank: each must raise ConfigError without touching a collective."""
    def boom(*a, **k):
        raise RuntimeError("collective called")

    saved = {n: getattr(dist, n) for n in ("all_reduce", "all_gather", "broadcast", "reduce_scatter")}
    for n in saved:
        setattr(dist, n, boom)
    msgs = []
    try:
        good = [torch.zeros(2, 6)] * 2
        cases = [
            lambda: swav_loss([torch.zeros(2, 6), torch.zeros(3, 6)], 0.1, 0.05, 3),
            lambda: swav_loss([torch.zeros(0, 6)] * 2, 0.1, 0.05, 3),
            lambda: swav_loss(good, 0.1, 0.05, 3, crops_for_assign=(0, 2)),
            lambda: sinkhorn(torch.zeros(0, 6), 0.05, 3),
            lambda: SwAVHead(4, [], 4, world * 2 + 1, shard_prototypes=True),
            lambda: SwAVHead(4, [], 4, 2 * world, shard_prototypes=True)(torch.zeros(2, 0, 4), **KW),
            lambda: SwAVHead(4, [], 4, 2 * world, shard_prototypes=True)(torch.zeros(2, 3, 4), **KW,
                                                                             crops_for_assign=(0, 5)),
            lambda: _build_model(shard=True)([torch.zeros(2, 3, 16, 16), torch.zeros(3, 3, 16, 16)]),
        ]
        for case in cases:
            try:
                case()
                msgs.append("no error")
            except ConfigError as e:
                msgs.append(str(e))
    finally:
        for n, f in saved.items():
            setattr(dist, n, f)
    return msgs


def _fsdp2(model: SwAVModel, crops: list[torch.Tensor], world: int) -> tuple:
    """Head and root wrapped with FSDP2 as bigseer.parallel does: loss, full gradients, renormalisation."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    fully_shard(model.head, mesh=mesh)
    fully_shard(model, mesh=mesh)
    loss = model(crops)
    loss.backward()
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.grad is not None}
    w = model.head.prototypes[0].weight
    with torch.no_grad():  # rows of different lengths, as after an optimizer step
        w.to_local().mul_(torch.arange(1.0, 1.0 + w.to_local().shape[0])[:, None])
    before = w.full_tensor().detach().clone()
    model.normalize_prototypes()
    return loss.detach(), grads, before, model.head.full_prototypes()


def _worker(rank: int, world: int, payload: dict) -> dict:
    rows = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    out: dict = {}
    # Sinkhorn and swav_loss on this rank's slice of the batch (fp32)
    scores = [s[rows].float().requires_grad_() for s in payload["scores"]]
    out["codes"] = sinkhorn(scores[0], 0.05, 3)
    out["codes_many"] = sinkhorn(scores[0], 0.05, 100)
    for assign in [(0, 1), (1, 3, 4)]:
        loss = swav_loss(scores, 0.1, 0.05, 3, assign)
        out[f"loss{assign}"] = (loss.detach(), torch.autograd.grad(loss, scores))
    # SwAVModel, replicated and sharded prototypes, eval mode (per-sample BN)
    crops = [c[:, rows] for c in payload["crops"]]
    for shard in (False, True):
        model = _build_model(shard)
        _load(model, payload["model_state"], rank, world)
        model.eval()
        loss = model(crops)
        loss.backward()
        out[f"model_shard{shard}"] = (loss.detach(), _grads(model))
        if shard:
            out["sharded_flag"] = getattr(model.head.prototypes[0].weight, "_bigseer_sharded", False)
            out["full_protos"] = model.head.full_prototypes()
    # queue across ranks (train mode, head only), replicated and sharded
    for shard in (False, True):
        torch.manual_seed(0)
        head = SwAVHead(5, [4], 6, K_MODEL, shard_prototypes=shard, queue_length=2 * B_LOCAL)
        head.load_state_dict(_local_state(payload["head_state"], shard, rank, world))
        steps = []
        for f in payload["head_feats"]:
            head.zero_grad(set_to_none=True)
            loss = head(f[:, rows].float(), **KW)
            loss.backward()
            steps.append((loss.detach(), _grads(head)))
        out[f"queue_shard{shard}"] = steps
    if world == 2:
        model = _build_model(False)
        _load(model, payload["model_state"], rank, world)
        out["fsdp2"] = _fsdp2(model.eval(), crops, world)
    out["errors"] = _errors_before_collectives(rank, world)
    return out


def _local_state(state: dict, shard: bool, rank: int, world: int) -> dict:
    state = {k: v.float() for k, v in state.items()}
    if shard:
        n = K_MODEL // world
        state["prototypes.0.weight"] = state["prototypes.0.weight"][rank * n:(rank + 1) * n]
    return state


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> None:
    """fp32 result vs float64 reference: relative 1e-5, absolute 1e-5 of the reference's scale."""
    b = b.double()
    torch.testing.assert_close(a.double(), b, rtol=rtol, atol=rtol * max(b.abs().max().item(), 1e-3))


def _reference_model(state: dict, crops: list[torch.Tensor]):
    model = _build_model(False).double()
    model.load_state_dict(state)
    model.eval()
    loss = model([c.double() for c in crops])
    loss.backward()
    return loss.detach(), _grads(model)


def _reference_queue(state: dict, feats: list[torch.Tensor], world: int):
    head = SwAVHead(5, [4], 6, K_MODEL, queue_length=2 * B_LOCAL * world).double()
    head.load_state_dict(state)
    steps = []
    for f in feats:
        head.zero_grad(set_to_none=True)
        loss = head(f, **KW)
        loss.backward()
        steps.append((loss.detach(), _grads(head)))
    return steps


@pytest.mark.parametrize("world", [2, 4])
def test_distributed_equals_single_process(world):
    b = B_LOCAL * world
    g = torch.Generator().manual_seed(world)
    scores = [s.detach() for s in random_scores(6, b, K, seed=world)]
    crops = [torch.randn(2, b, 3, 16, 16, generator=g), torch.randn(2, b, 3, 8, 8, generator=g)]
    ref_model = _build_model(False)
    with torch.no_grad():  # non-trivial BN running stats for eval mode
        for m in ref_model.trunk.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    state = {k: v.double() for k, v in ref_model.state_dict().items()}
    torch.manual_seed(0)
    head_state = {k: v.double() for k, v in SwAVHead(5, [4], 6, K_MODEL).state_dict().items()}
    head_feats = [torch.randn(3, b, 5, generator=g, dtype=torch.float64) for _ in range(STEPS)]
    payload = dict(scores=scores, crops=crops, model_state=state, head_state=head_state, head_feats=head_feats)
    res = run_distributed(_worker, world, args=(payload,))

    # Sinkhorn: slices of the one-process codes; rows sum to 1; columns uniform over the global batch
    _close(torch.cat([r["codes"] for r in res]), ref_sinkhorn(scores[0], 0.05, 3))
    many = torch.cat([r["codes_many"] for r in res])
    _close(many, ref_sinkhorn(scores[0], 0.05, 100))
    _close(many.sum(1), torch.ones(b, dtype=torch.float64))
    cols = many.double().sum(0)  # 100 iterations: prototype mass over the global batch close to b / K
    assert (cols - b / K).abs().max() < 0.05 * b / K
    # swav_loss: mean over ranks = one-process loss; gradient of that mean = one-process gradient
    for assign in [(0, 1), (1, 3, 4)]:
        leaves = [s.clone().requires_grad_() for s in scores]
        ref = ref_loss(leaves, 0.1, 0.05, 3, assign)
        ref_g = torch.autograd.grad(ref, leaves)
        _close(sum(r[f"loss{assign}"][0] for r in res) / world, ref)
        for v in range(6):
            _close(torch.cat([r[f"loss{assign}"][1][v] for r in res]) / world, ref_g[v])
    # SwAVModel: loss, trunk/MLP gradients averaged over ranks (DDP), prototype gradients
    ref_l, ref_g = _reference_model(state, crops)
    for shard in (False, True):
        losses = [r[f"model_shard{shard}"][0] for r in res]
        _close(sum(losses) / world, ref_l)
        grads = [r[f"model_shard{shard}"][1] for r in res]
        assert set(grads[0]) == set(ref_g)
        for name, rg in ref_g.items():
            if shard and name.startswith("head.prototypes"):
                got = torch.cat([gr[name] for gr in grads])  # shards already hold the global-mean gradient
            else:
                got = sum(gr[name] for gr in grads) / world
            _close(got, rg)
    for r in res:  # sharded and replicated ranks report the same local loss
        _close(r["model_shardTrue"][0], r["model_shardFalse"][0].double())
        assert r["sharded_flag"] is True
        _close(r["full_protos"], state["head.prototypes.0.weight"])
    # queue across ranks: starts at the same step and equals the one-process queue of W x length
    ref_steps = _reference_queue(head_state, head_feats, world)
    for shard in (False, True):
        for step, (rl, rg) in enumerate(ref_steps):
            _close(sum(r[f"queue_shard{shard}"][step][0] for r in res) / world, rl)
            for name, want in rg.items():
                parts = [r[f"queue_shard{shard}"][step][1][name] for r in res]
                got = torch.cat(parts) if shard and name.startswith("prototypes") else sum(parts) / world
                _close(got, want)
    if world == 2:  # FSDP2 (head unit + root): same loss, its averaged gradients equal the reference
        _close(sum(r["fsdp2"][0] for r in res) / world, ref_l)
        for name, rg in ref_g.items():
            _close(res[0]["fsdp2"][1][name], rg)
        _, _, before, after = res[0]["fsdp2"]
        torch.testing.assert_close(after, before / before.norm(dim=1, keepdim=True))
        torch.testing.assert_close(res[1]["fsdp2"][3], after)
    # every rank raised the same clear errors without calling a collective
    for r in res:
        assert r["errors"] == res[0]["errors"]
        assert "no error" not in r["errors"] and not any("collective" in m for m in r["errors"])
    assert "divisible by the world size" in res[0]["errors"][4]
