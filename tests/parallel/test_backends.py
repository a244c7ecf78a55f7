"""ddp vs fsdp (FSDP2) on 2 gloo ranks, in one spawn: LARS equivalence (optimizer level on DTensor shards
and a full training step), keys, checkpointing under FSDP, BN stats averaging, prototype normalisation,
bf16 policy, fp16 skip-on-overflow, save/load."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist

from bigseer import parallel
from bigseer.errors import ConfigError
from bigseer.optim import LARS
from tests.distributed_utils import run_distributed
from tests.numerics import assert_close_f64, assert_states_within_fp32_error, assert_within_fp32_error
from tests.parallel.standin import emulate_ranks, load_state, make_batch, make_model, run_steps, save_state

pytestmark = [pytest.mark.numerics, pytest.mark.slow]  # re-run by .ci/run under another kernel dispatch

LR = 0.4


def _lars(groups, foreach=None):
    return LARS(groups, lr=LR, momentum=0.9, weight_decay=1e-5, foreach=foreach)


def _train(backend, rank, world, steps=2, **kw):
    p = parallel.setup(make_model(0), backend=backend, optimizer_factory=_lars, **kw)
    return p, run_steps(p, rank, world, steps)


def _optimizer_level(rank, world, foreach=None):
    """LARS on FSDP2-style Shard(0) DTensors (uneven rows too) == LARS on the full tensors, in float64 (the
    shard norms are all-reduced sums: another summation order, so only equal up to rounding); ``foreach``
    for the DTensor side (True: the multi-tensor path that is the default on GPUs)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(5)
    shapes = [(6, 4), (3, 5), (7,)]
    full = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes] for _ in range(2)]
    ref = [torch.nn.Parameter(t.clone()) for t in full]
    dts = [torch.nn.Parameter(distribute_tensor(t.clone(), mesh, [Shard(0)])) for t in full]
    o_ref, o_dt = _lars(ref), _lars(dts, foreach)
    for step in range(2):
        for pr, pd, gr in zip(ref, dts, grads[step]):
            pr.grad = gr.clone()
            pd.grad = distribute_tensor(gr.clone(), mesh, [Shard(0)])
        o_ref.step()
        o_dt.step()
    return [pd.full_tensor() for pd in dts], [pr.detach() for pr in ref]


def _sharded_rows_lars(rank, world, foreach=None):
    """LARS on a rank's rows of a ``_bigseer_sharded`` matrix (sharded prototypes) == those rows of LARS on
    the whole matrix (float64: the norm is an all-reduced sum of the ranks' squares)."""
    g = torch.Generator().manual_seed(6)
    full = torch.randn(8, 5, generator=g, dtype=torch.float64)
    grads = [torch.randn(8, 5, generator=g, dtype=torch.float64) for _ in range(2)]
    rows = slice(rank * 4, (rank + 1) * 4)
    sharded = torch.nn.Parameter(full[rows].clone())
    sharded._bigseer_sharded = True
    whole = torch.nn.Parameter(full.clone())
    o_sh, o_whole = _lars([sharded], foreach), _lars([whole])
    for grad in grads:
        sharded.grad, whole.grad = grad[rows].clone(), grad.clone()
        o_sh.step()
        o_whole.step()
    return sharded.detach().clone(), whole.detach()[rows].clone(), full[rows]


def _rank_fn(rank, world, tmp):
    out = {}
    out["opt_dt"], out["opt_ref"] = _optimizer_level(rank, world)
    out["sharded_lars"] = _sharded_rows_lars(rank, world)
    out["opt_dt_foreach"], _ = _optimizer_level(rank, world, foreach=True)
    out["sharded_lars_foreach"] = _sharded_rows_lars(rank, world, foreach=True)

    # ddp baseline (no checkpointing) vs fsdp with activation checkpointing on every block
    pd, out["ddp_losses"] = _train("ddp", rank, world, grad_clip=0.05)
    out["ddp_local_rm"] = pd.unwrapped.trunk.s1.b1.conv1.bn.running_mean.clone()
    out["ddp_sd"] = pd.full_state_dict()
    pf, out["fsdp_losses"] = _train("fsdp", rank, world, checkpointing="all", grad_clip=0.05)
    out["fsdp_sd"] = pf.full_state_dict()
    out["plain_keys"] = list(make_model(0).state_dict())
    out["fsdp_counts"] = {k: int(v) for k, v in out["fsdp_sd"].items() if k.endswith("num_batches_tracked")}

    # prototype normalisation through run_on_full_params on sharded params
    pf.run_on_full_params(lambda m: m.normalize_prototypes())
    sd = pf.full_state_dict()
    out["proto_norms"] = sd["head.weight"].norm(dim=1) if rank == 0 else None

    # save / load round trips through the checkpoint pieces; and across backends (fsdp state into ddp)
    for name, p in (("fsdp", pf), ("ddp", pd)):
        d = os.path.join(tmp, name)
        before = p.full_state_dict()
        save_state(p, d)
        p.run_on_full_params(lambda m: [t.mul_(0.5) for t in m.parameters()])
        load_state(p, d)
        after = p.full_state_dict()
        out[f"{name}_reload_ok"] = all(torch.equal(before[k], after[k]) for k in before)
    cross = parallel.setup(make_model(1), backend="ddp", optimizer_factory=_lars)
    load_state(cross, os.path.join(tmp, "fsdp"))
    got = cross.full_state_dict()
    out["fsdp_to_ddp_ok"] = all(torch.equal(got[k], v) for k, v in pf.full_state_dict().items())

    # bf16 under FSDP2: BN units stay fp32, a step runs
    pb, losses = _train("fsdp", rank, world, steps=1, precision="bf16")
    out["bf16_loss_finite"] = all(torch.isfinite(torch.tensor(losses)))
    out["bf16_bn_dtype"] = pb.unwrapped.trunk.s1.b1.conv1.bn.weight.dtype

    # fp16: after backward (and the gradient reduction), ONE non-finite element in rank 0's local gradient
    # (shard) -> every rank skips the step and halves the scale (a rank-local check would step rank 1 and
    # let the replicas diverge); the next step applies
    for backend in ("ddp", "fsdp"):
        model = make_model(0)
        p = parallel.setup(model, backend=backend, precision="fp16", optimizer_factory=_lars)
        p.load_scaler_state({"scale": 16.0, "growth_tracker": 0})  # low enough that no real overflow happens
        s0 = p.loss_scale
        before = {k: v.clone() for k, v in p.full_state_dict().items() if "weight" in k}
        x = make_batch(4, seed=20 + rank)
        loss = p.forward(x)
        p.backward(loss)
        if rank == 0:
            g = p.unwrapped.trunk.s2.b1.conv2.conv.weight.grad
            (g.to_local() if hasattr(g, "to_local") else g).view(-1)[3] = float("inf")
        skipped = not p.step()
        p.zero_grad()
        same = all(torch.equal(before[k], v) for k, v in p.full_state_dict().items() if k in before)
        s1 = p.loss_scale
        applied, scales = False, []
        for _ in range(12):  # (real overflows, were there any, are skipped too, halving each time)
            p.backward(p.forward(x))
            applied = p.step()
            p.zero_grad()
            scales.append(p.loss_scale)
            if applied:
                break
        out[f"fp16_{backend}"] = dict(s0=s0, s1=s1, skipped=skipped, unchanged=same, applied=applied,
                                      scales=scales)

    # SyncBN (group = both ranks) with checkpointing: equal running stats on all ranks, one update per
    # forward, and fsdp == ddp
    for backend in ("ddp", "fsdp"):
        p, _ = _train(backend, rank, world, steps=1, syncbn_group_size=2, checkpointing="all")
        bn = p.unwrapped.trunk.s2.b1.conv2.bn
        out[f"syncbn_{backend}"] = dict(cls=type(bn).__name__, rm=bn.running_mean.clone(),
                                        n=int(bn.num_batches_tracked), sd=p.full_state_dict())

    # _bigseer_sharded params: neither averaged (ddp) nor sharded (fsdp); gathered in the full state dict
    for backend in ("ddp", "fsdp"):
        local = torch.tensor([1.0, 2.0]) * (rank + 1)
        p = parallel.setup(make_model(0, shard=local), backend=backend, optimizer_factory=_lars)
        p.backward(p.forward(make_batch(4, seed=rank)))
        grad = p.unwrapped.shard.grad.clone()
        p.step()
        shard, mom = p.unwrapped.shard.detach().clone(), p.optimizer.state[p.unwrapped.shard]["momentum_buffer"].clone()
        d = os.path.join(tmp, f"shard_{backend}")
        save_state(p, d)
        p.run_on_full_params(lambda m: [t.mul_(0.5) for t in m.parameters()])
        load_state(p, d)
        reload_ok = (torch.equal(p.unwrapped.shard, shard)
                     and torch.equal(p.optimizer.state[p.unwrapped.shard]["momentum_buffer"], mom))
        out[f"shard_{backend}"] = dict(grad=grad, is_dtensor=hasattr(p.unwrapped.shard, "to_local"),
                                       full=p.full_state_dict().get("shard"), local=shard, reload_ok=reload_ok,
                                       moved=not torch.equal(shard, local))
        p.zero_grad()

    # errors raised identically on every rank, before any collective
    try:
        parallel.setup(make_model(0), backend="ddp", syncbn_group_size=3, optimizer_factory=_lars)
    except ConfigError as exc:
        out["syncbn_error"] = str(exc)
    dist.barrier()
    return out


@pytest.fixture(scope="module")
def results():
    with tempfile.TemporaryDirectory() as tmp:
        yield run_distributed(_rank_fn, world_size=2, args=(tmp,))


@pytest.mark.parametrize("path", ["loop", "foreach"])
def test_lars_on_dtensor_shards_equals_unsharded(results, path):
    key = "opt_dt" if path == "loop" else "opt_dt_foreach"
    for r in results:
        for got, ref in zip(r[key], r["opt_ref"]):
            assert_close_f64(got, ref, f"LARS on DTensor shards ({path})")


def _weights(sd):
    return {k: v for k, v in sd.items() if "running" not in k and "num_batches" not in k}


@pytest.mark.parametrize("path", ["loop", "foreach"])
def test_lars_step_on_sharded_rows_equals_the_whole_matrix_step(results, path):
    for r in results:
        got, ref, start = r["sharded_lars" if path == "loop" else "sharded_lars_foreach"]
        assert_close_f64(got, ref, "sharded LARS rows")
        assert (got - start).abs().max() > 1e-6  # the steps moved the rows


def test_fsdp_with_checkpointing_matches_ddp_lars_steps(results):
    """fsdp == ddp up to fp32 rounding: the bound is derived from the float64 run of the same two steps
    (tests/numerics.py)."""
    r0 = results[0]
    losses64, weights64, init = emulate_ranks(2, 2, _lars, grad_clip=0.05)
    assert_within_fp32_error(torch.tensor(r0["fsdp_losses"]), torch.tensor(r0["ddp_losses"]),
                             torch.tensor([step[0] for step in losses64]), "rank-0 losses")
    assert list(r0["fsdp_sd"]) == list(r0["ddp_sd"]) == r0["plain_keys"]
    assert_states_within_fp32_error(_weights(r0["fsdp_sd"]), _weights(r0["ddp_sd"]), weights64, "fsdp vs ddp", init)
    assert set(r0["fsdp_counts"].values()) == {2}  # 2 steps: BN updated once per forward despite recompute


def test_bn_stats_averaged_across_ranks_without_syncbn(results):
    local = [r["ddp_local_rm"] for r in results]
    assert not torch.allclose(local[0], local[1])
    torch.testing.assert_close(results[0]["ddp_sd"]["trunk.s1.b1.conv1.bn.running_mean"], (local[0] + local[1]) / 2)


def test_prototype_normalisation_and_reload(results):
    r0 = results[0]
    torch.testing.assert_close(r0["proto_norms"], torch.ones_like(r0["proto_norms"]))
    assert r0["fsdp_reload_ok"] and r0["ddp_reload_ok"] and r0["fsdp_to_ddp_ok"]


def test_bf16_fsdp_keeps_bn_fp32(results):
    assert results[0]["bf16_loss_finite"] and results[0]["bf16_bn_dtype"] == torch.float32


@pytest.mark.parametrize("backend", ["ddp", "fsdp"])
def test_fp16_overflow_step_skipped_and_scale_halved(results, backend):
    for r in results:
        f = r[f"fp16_{backend}"]
        assert f["s0"] == 16.0 and f["skipped"] and f["unchanged"] and f["applied"]
        assert f["s1"] == f["s0"] / 2
        assert f["scales"][:-1] == [f["s1"] / 2 ** (i + 1) for i in range(len(f["scales"]) - 1)]
        assert f["scales"][-1] == (f["scales"][-2] if len(f["scales"]) > 1 else f["s1"])
    assert results[0][f"fp16_{backend}"]["scales"] == results[1][f"fp16_{backend}"]["scales"]  # ranks agree


def test_syncbn_through_setup_with_checkpointing(results):
    for backend in ("ddp", "fsdp"):
        a, b = results[0][f"syncbn_{backend}"], results[1][f"syncbn_{backend}"]
        assert "GroupSyncBatchNorm" in a["cls"] and a["n"] == b["n"] == 1
        torch.testing.assert_close(a["rm"], b["rm"])
    ddp, fsdp = results[0]["syncbn_ddp"]["sd"], results[0]["syncbn_fsdp"]["sd"]
    assert list(ddp) == list(fsdp) == results[0]["plain_keys"]
    _, weights64, init = emulate_ranks(2, 1, _lars, syncbn=True)  # SyncBN over the world = one global batch
    assert_states_within_fp32_error(_weights(fsdp), _weights(ddp), weights64, "syncbn fsdp vs ddp", init)


@pytest.mark.parametrize("backend", ["ddp", "fsdp"])
def test_sharded_params_not_averaged_nor_resharded(results, backend):
    for r in results:
        s = r[f"shard_{backend}"]
        assert not s["is_dtensor"] and s["moved"] and s["reload_ok"]
    for r, scale in zip(results, (1, 2)):  # its own gradient 2 * shard, not the ranks' mean
        torch.testing.assert_close(r[f"shard_{backend}"]["grad"], 2 * scale * torch.tensor([1.0, 2.0]))
    full = torch.cat([r[f"shard_{backend}"]["local"] for r in results])
    torch.testing.assert_close(results[0][f"shard_{backend}"]["full"], full)


def test_syncbn_group_not_dividing_world_is_config_error(results):
    assert "dividing the world size 2" in results[0]["syncbn_error"]
