"""DeepSpeed ZeRO 1/2/3 on 2 CPU gloo ranks, one spawn: fp32 SGD and LARS steps equal the ddp baseline
(LARS with per-tensor trust ratios, momentum, weight decay, an lr change and a save/load round trip),
fp16 on CPU warns once and falls back, prototypes normalise under ZeRO-3, and keys / save / load work."""

import os
import tempfile
import warnings

import pytest
import torch
from torch import nn

from bigseer import parallel
from bigseer.errors import ConfigError
from bigseer.optim import LARS
from tests.distributed_utils import run_distributed
from tests.numerics import assert_states_within_fp32_error
from tests.parallel.standin import StandIn, emulate_ranks, load_state, make_batch, make_model, run_steps, save_state

pytestmark = pytest.mark.numerics  # re-run by .ci/run under another kernel dispatch


def _sgd(groups):
    return torch.optim.SGD(groups, lr=0.05, momentum=0.9)


def _lars(groups):
    # trust 0.02 makes each step move every tensor by ~1% of its norm, so a wrong ratio shows
    return LARS(groups, lr=0.5, momentum=0.9, weight_decay=1e-3, trust_coefficient=0.02)


class _WithScalar(StandIn):
    """StandIn plus a 1-element parameter: under ZeRO-3 on 2 ranks rank 1's slice of it is padding only."""

    def __init__(self) -> None:
        super().__init__()
        self.temp = nn.Parameter(torch.full((1,), 1.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.temp


def _lars_run(backend, rank, world, tmp, **kw):
    """2 LARS steps, the second at lr 0.25 with momentum from the first; ZeRO-2/3 save before the second
    step, take it, reload and take it again (the momentum buffers must come back).
    Returns (losses, weights, reload ok, lrs, number of param groups)."""
    torch.manual_seed(0)
    p = parallel.setup(_WithScalar(), backend=backend, optimizer_factory=_lars, **kw)
    losses = _train_lars(p, rank, world, [0])
    p.set_lr(0.25)
    reload_ok = None
    if kw.get("ds_config") in ("zero2_fp32", "zero3_fp32"):
        d = os.path.join(tmp, f"lars_{kw['ds_config']}")
        save_state(p, d)
        _train_lars(p, rank, world, [1])
        before = _weights(p.full_state_dict())
        load_state(p, d)
    losses += _train_lars(p, rank, world, [1])
    w = _weights(p.full_state_dict())
    if kw.get("ds_config") in ("zero2_fp32", "zero3_fp32"):
        reload_ok = before.keys() == w.keys() and all(torch.equal(before[k], w[k]) for k in w)
    return losses, w, reload_ok, {g["lr"] for g in p.optimizer.param_groups}, len(p.optimizer.param_groups)


def _train_lars(p, rank, world, steps):
    losses = []
    for step in steps:
        loss = p.forward(make_batch(4 * world, seed=30 + step)[rank * 4:(rank + 1) * 4])
        losses.append(float(loss.detach()))
        p.backward(loss)
        assert p.step()
        p.zero_grad()
    return losses


def _weights(sd):
    return {k: v for k, v in sd.items() if "running" not in k and "num_batches" not in k}


def _train(p, rank, world, steps=2):
    run_steps(p, rank, world, steps)


def _rank_fn(rank, world, tmp):
    out = {}
    ref = parallel.setup(make_model(0), backend="ddp", optimizer_factory=_sgd)
    _train(ref, rank, world)
    out["ddp"] = _weights(ref.full_state_dict())
    for stage in (1, 2, 3):
        p = parallel.setup(make_model(0), backend="deepspeed", ds_config=f"zero{stage}_fp32", optimizer_factory=_sgd)
        _train(p, rank, world)
        out[f"zero{stage}"] = _weights(p.full_state_dict())
        out[f"zero{stage}_keys"] = list(p.full_state_dict())
        if stage == 3:
            p.run_on_full_params(p.unwrapped.normalize_prototypes)  # a bound method works too
            p.set_lr(0.0)  # a step at lr 0 rewrites params from DeepSpeed's fp32 master partitions:
            _train(p, rank, world, steps=1)  # the normalised rows must have reached those too
            out["z3_norms"] = p.full_state_dict().get("head.weight", torch.ones(1, 1)).norm(dim=1)
        if stage == 2:
            before = p.full_state_dict()
            save_state(p, os.path.join(tmp, "z2"))
            p.run_on_full_params(lambda m: [t.mul_(0.5) for t in m.parameters()])
            load_state(p, os.path.join(tmp, "z2"))
            after = p.full_state_dict()
            out["z2_reload_ok"] = all(torch.equal(before[k], after[k]) for k in before)
    # prototypes frozen from the first step (as SwAV does) stay unchanged under ZeRO-2, then train
    p = parallel.setup(make_model(0), backend="deepspeed", ds_config="zero2_fp32", optimizer_factory=_sgd)
    p.set_frozen(["head.weight"], True)
    w0 = p.full_state_dict()
    _train(p, rank, world, steps=2)
    w1 = p.full_state_dict()
    p.set_frozen(["head.weight"], False)
    _train(p, rank, world, steps=1)
    w2 = p.full_state_dict()
    out["z2_frozen"] = (torch.equal(w0["head.weight"], w1["head.weight"]),
                        not torch.equal(w0["trunk.stem.conv.weight"], w1["trunk.stem.conv.weight"]),
                        not torch.equal(w1["head.weight"], w2["head.weight"]))
    out["lars_ddp"] = _lars_run("ddp", rank, world, tmp)
    for stage in (1, 2, 3):
        out[f"lars_zero{stage}"] = _lars_run("deepspeed", rank, world, tmp, ds_config=f"zero{stage}_fp32")
    # fp16 on CPU: one warning, then bf16 autocast with fp32 params; a step runs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = parallel.setup(make_model(0), backend="deepspeed", ds_config="zero1", precision="fp16",
                           optimizer_factory=_sgd)
    out["fp16_warnings"] = [str(w.message) for w in caught if "fp16" in str(w.message)]
    out["fp16_effective"] = p.precision
    out["fp16_scale"] = p.loss_scale
    _train(p, rank, world, steps=1)
    out["fp16_bn_dtype"] = p.unwrapped.trunk.s1.b1.conv1.bn.weight.dtype
    return out


@pytest.fixture(scope="module")
def results():
    with tempfile.TemporaryDirectory() as tmp:
        yield run_distributed(_rank_fn, world_size=2, args=(tmp,), env={"DS_ACCELERATOR": "cpu"})


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_fp32_matches_ddp(results, stage):
    """Equal up to fp32 rounding (DeepSpeed averages gradients in its own buckets): the bound comes from the
    float64 run of the same two SGD steps (tests/numerics.py)."""
    r0 = results[0]
    assert r0[f"zero{stage}_keys"] == list(make_model(0).state_dict())
    _, weights64, init = emulate_ranks(2, 2, _sgd)
    assert_states_within_fp32_error(r0[f"zero{stage}"], r0["ddp"], weights64, f"zero{stage} vs ddp", init)


def test_zero3_prototype_normalisation_and_zero2_reload(results):
    norms = results[0]["z3_norms"]
    assert norms.numel() == 6
    torch.testing.assert_close(norms, torch.ones_like(norms))
    assert results[0]["z2_reload_ok"]


def test_set_frozen_under_zero2(results):
    for r in results:
        assert r["z2_frozen"] == (True, True, True)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_lars_under_zero_matches_ddp(results, stage):
    """Same fp32 data and maths; only the reduction order differs (DeepSpeed averages gradients in its own
    buckets, LARS sums squares per partition): ~1e-7 relative per operation; seen 8e-8 relative per tensor
    and 2e-7 in the losses. Bound: 1e-6 relative per tensor, 1e-6 on losses (norms from each rank's slice
    alone, without the all-reduce, are off by 4e-2)."""
    for r in results:
        losses, _, reload_ok, lrs, groups = r[f"lars_zero{stage}"]
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(r["lars_ddp"][0]), rtol=1e-6, atol=1e-6)
        assert lrs == {0.25} and groups == len(list(_WithScalar().parameters()))
        assert reload_ok is (True if stage > 1 else None)
    ref_w, w = results[0]["lars_ddp"][1], results[0][f"lars_zero{stage}"][1]  # rank 0 holds the full state
    assert w.keys() == ref_w.keys()
    for k, v in ref_w.items():
        assert (w[k] - v).norm() <= 1e-6 * v.norm(), k
    init = make_model(0).trunk.stem.conv.weight.detach()
    assert (ref_w["trunk.stem.conv.weight"] - init).norm() > 1e-3 * init.norm()  # LARS did move the weights


@pytest.mark.parametrize("ds_config, match", [
    ("zero2_fp32", "LARS under DeepSpeed ZeRO stage 2: param group 0 holds"),
    ({"zero_optimization": {"stage": 3, "mics_shard_size": 2}}, "LARS under DeepSpeed MiCS"),
])
def test_lars_refused_before_any_work_where_still_wrong(ds_config, match):
    """A factory that merges the one-tensor groups again, and MiCS (partitions over shard groups)."""
    merge = "zero2" in str(ds_config)
    with pytest.raises(ConfigError, match=match):
        parallel.setup(make_model(0), backend="deepspeed", ds_config=ds_config,
                       optimizer_factory=lambda g: LARS([q for gr in g for q in gr["params"]] if merge else g, lr=0.1))


def test_fp16_on_cpu_warns_once_and_falls_back_to_bf16(results):
    for r in results:
        assert len(r["fp16_warnings"]) == 1 and "not supported" in r["fp16_warnings"][0]
        assert r["fp16_effective"] == "bf16" and r["fp16_scale"] is None
        assert r["fp16_bn_dtype"] == torch.float32


def test_resolve_precision_blocks(monkeypatch):
    from bigseer.parallel import deepspeed as ds

    monkeypatch.setattr(ds, "fp16_supported", lambda: False)
    with pytest.warns(RuntimeWarning, match="fp16 is not supported") as rec:
        cfg, eff = ds.resolve_precision(ds.load_ds_config("zero2"), "fp16", "cuda")
    assert len(rec) == 1 and eff == "bf16"
    assert "fp16" not in cfg and "bf16" not in cfg
    assert cfg["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    cfg, eff = ds.resolve_precision(ds.load_ds_config("zero2_fp32"), "bf16")
    assert eff == "bf16" and cfg["torch_autocast"]["enabled"] and "bf16" not in cfg
    monkeypatch.setattr(ds, "fp16_supported", lambda: True)
    cfg, eff = ds.resolve_precision(ds.load_ds_config("zero2_fp32"), "fp16", "cuda")
    assert eff == "fp16" and cfg["fp16"]["initial_scale_power"] == 16 and cfg["fp16"]["hysteresis"] == 2
