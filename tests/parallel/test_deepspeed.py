"""DeepSpeed ZeRO 1/2/3 on 2 CPU gloo ranks, one spawn: fp32 SGD steps equal the ddp baseline, fp16 on CPU
warns once and falls back, prototypes normalise under ZeRO-3, and keys / save / load work. LARS under ZeRO
(flat groups and one group per tensor): tests/parallel/test_lars_zero_flat.py."""

import os
import tempfile
import warnings

import pytest
import torch

from bigseer import parallel
from bigseer.errors import ConfigError
from bigseer.optim import LARS
from tests.distributed_utils import run_distributed
from tests.numerics import assert_states_within_fp32_error
from tests.parallel.standin import (
    emulate_ranks,
    load_state,
    make_model,
    run_steps,
    save_state,
)

pytestmark = [pytest.mark.numerics, pytest.mark.slow]  # re-run by .ci/run under another kernel dispatch


def _sgd(groups):
    return torch.optim.SGD(groups, lr=0.05, momentum=0.9)


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
