"""Meta-device init for backend fsdp: build on meta -> fully_shard -> to_empty -> the model's own init_weights
on each shard, which gives bitwise the eager build's weights (init is a function of seed, name and row)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bigseer import parallel
from bigseer.errors import ConfigError
from bigseer.models import build_regnet
from bigseer.optim import LARS
from bigseer.parallel.meta_init import is_meta_model, local_tensor, materialize_meta
from bigseer.ssl import SwAVHead, SwAVModel
from tests.distributed_utils import run_distributed

pytestmark = pytest.mark.numerics  # re-run by .ci/run under another kernel dispatch


def _meta_swav(shard_prototypes: bool = False) -> SwAVModel:
    with torch.device("meta"):
        trunk = build_regnet("regnety_test", device="meta")
        head = SwAVHead(trunk.num_features, [512], 64, 128, shard_prototypes=shard_prototypes)
        return SwAVModel(trunk, head)


def _crops(rank: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(rank)
    return [torch.randn(2, 4, 3, 32, 32, generator=g), torch.randn(2, 4, 3, 16, 16, generator=g)]


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


SEED = 11


def _eager_swav(shard_prototypes: bool = False) -> SwAVModel:
    trunk = build_regnet("regnety_test")
    head = SwAVHead(trunk.num_features, [512], 64, 128, shard_prototypes=shard_prototypes)
    return SwAVModel(trunk, head).init_weights(seed=SEED)


def _rank_fn(rank: int, world: int) -> dict:
    torch.manual_seed(rank)  # the ranks' default generators differ: the init must not depend on them
    model = _meta_swav()
    assert is_meta_model(model)
    par = parallel.setup(model, backend="fsdp", optimizer_factory=lambda g: LARS(g, lr=0.5), init_seed=SEED)
    out: dict = {"device_type": par.device_type, "meta_left": is_meta_model(model)}
    named = dict(model.named_parameters())
    out["local_vs_full"] = {n: (local_tensor(p).numel(), p.numel()) for n, p in named.items()}
    out["full"] = {n: _full(p) for n, p in named.items()}
    out["eager"] = {n: p.detach().clone() for n, p in _eager_swav().named_parameters()}
    out["buffers"] = {n: b.detach().clone() for n, b in model.named_buffers()}
    out["last_bn"] = [f"trunk.{n}.conv3.bn.weight" for n, m in model.trunk.named_modules() if m in model.trunk.blocks()]
    # one full training step
    loss = par.forward(_crops(rank))
    par.backward(loss)
    par.step()
    par.run_on_full_params(model.normalize_prototypes)
    par.zero_grad()
    out["loss"] = float(loss)
    out["after"] = {n: _full(p) for n, p in model.named_parameters()}
    # sharded prototypes: the _bigseer_sharded attribute survives to_empty, each rank holds its own rows
    sharded = _meta_swav(shard_prototypes=True)
    par2 = parallel.setup(sharded, backend="fsdp", optimizer_factory=lambda g: torch.optim.SGD(g, lr=0.1),
                          init_seed=SEED)
    w = sharded.head.prototypes[0].weight
    out["sharded_attr"] = getattr(w, "_bigseer_sharded", False)
    out["sharded_rows"] = w.detach().clone()
    loss2 = par2.forward(_crops(rank))
    par2.backward(loss2)
    par2.step()
    out["loss2"] = float(loss2)
    return out


@pytest.fixture(scope="module")
def results() -> list[dict]:
    return run_distributed(_rank_fn, world_size=2)


def test_only_local_shards_allocated_and_all_finite(results):
    for r in results:
        assert r["device_type"] == "cpu" and not r["meta_left"]
        for name, (local, full) in r["local_vs_full"].items():
            assert local <= math.ceil(full / 2), name  # dim-0 shard of 2 ranks, never the whole tensor
        assert all(torch.isfinite(t).all() for t in r["full"].values())
        assert all(torch.isfinite(t).all() for t in r["buffers"].values())
    # both ranks see the same full tensors (one sharded model), and the two shards are different draws
    w0, w1 = results[0]["full"]["trunk.s4.b1.conv2.conv.weight"], results[1]["full"]["trunk.s4.b1.conv2.conv.weight"]
    assert torch.equal(w0, w1)
    assert not torch.equal(w0[:24], w0[24:])


def test_meta_shards_hold_exactly_the_eager_weights(results):
    """Bitwise: both paths run the same draws on freshly allocated blocks of the same rows."""
    for r in results:
        assert r["full"].keys() == r["eager"].keys()
        for n, t in r["eager"].items():
            assert torch.equal(r["full"][n], t), n


def test_conv_std_follows_fan_out(results):
    full = results[0]["full"]
    # the largest convs of regnety_test: s4.b1.conv2 (48x8x3x3, groups 6) and s4.b1.conv3 (48x48x1x1)
    for name, fan_out in (("trunk.s4.b1.conv2.conv.weight", 9 * 48 // 6), ("trunk.s4.b1.conv3.conv.weight", 48)):
        w = full[name]
        assert abs(w.mean().item()) < 0.1 * math.sqrt(2 / fan_out), name
        assert w.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1), name
    for name, t in full.items():
        if name.endswith(".bias") and ".conv" in name and ".bn." not in name:
            assert not t.any(), name


def test_batchnorm_ones_zeros_and_last_gamma_zero(results):
    r = results[0]
    last = set(r["last_bn"])
    assert len(last) == 4
    bn_weights = [n for n in r["full"] if n.endswith(".bn.weight")]
    assert len(bn_weights) > len(last)
    for n in bn_weights:
        w = r["full"][n]
        assert torch.equal(w, torch.zeros_like(w) if n in last else torch.ones_like(w)), n
        assert not r["full"][n.replace(".weight", ".bias")].any(), n
    for n, b in r["buffers"].items():
        if n.endswith("running_var"):
            assert torch.equal(b, torch.ones_like(b)), n
        elif n.endswith("running_mean") or n.endswith("num_batches_tracked"):
            assert not b.any(), n


def test_head_linear_and_unit_norm_prototypes(results):
    full = results[0]["full"]
    w = full["head.projection.0.weight"]  # 512 x 48: U(-1/sqrt(48), 1/sqrt(48))
    bound = 1 / math.sqrt(48)
    assert w.abs().max().item() <= bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    protos = full["head.prototypes.0.weight"]
    assert protos.shape == (128, 64)
    torch.testing.assert_close(protos.norm(dim=1), torch.ones(128))
    # still unit rows after one step + renormalisation, and the step changed them
    after = results[0]["after"]["head.prototypes.0.weight"]
    torch.testing.assert_close(after.norm(dim=1), torch.ones(128))
    assert not torch.equal(after, protos)


def test_one_training_step_runs(results):
    for r in results:
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert all(torch.isfinite(t).all() for t in r["after"].values())
        assert math.isfinite(r["loss2"])
    changed = [n for n in results[0]["full"] if not torch.equal(results[0]["full"][n], results[0]["after"][n])]
    assert "trunk.stem.conv.weight" in changed and "head.projection.0.weight" in changed


def test_sharded_prototypes_keep_attribute_and_hold_their_rows_of_the_eager_matrix(results):
    a, b = results[0]["sharded_rows"], results[1]["sharded_rows"]
    assert results[0]["sharded_attr"] and results[1]["sharded_attr"]
    assert a.shape == b.shape == (64, 64)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(64))
    assert torch.equal(torch.cat([a, b]), results[0]["eager"]["head.prototypes.0.weight"])


def test_single_process_meta_model_is_materialised():
    torch.manual_seed(0)
    model = _meta_swav()
    par = parallel.setup(model, backend="fsdp", optimizer_factory=lambda g: torch.optim.SGD(g, lr=0.1))
    assert par.device_type == "cpu" and not is_meta_model(model)
    w = model.trunk.s4.b1.conv3.conv.weight
    assert w.std().item() == pytest.approx(math.sqrt(2 / 48), rel=0.1)
    loss = par.forward(_crops(0))
    par.backward(loss)
    par.step()
    assert math.isfinite(float(loss.detach()))


def test_a_model_without_its_own_init_is_a_config_error_before_allocation():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4, device="meta")

    model = Odd()
    with pytest.raises(ConfigError, match="Odd has no init_weights"):
        materialize_meta(model, "cpu")
    assert is_meta_model(model)


def test_eager_init_is_a_function_of_the_seed_not_of_the_global_generator():
    torch.manual_seed(1)
    a = _eager_swav()
    torch.manual_seed(2)
    b = _eager_swav()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = SwAVModel(build_regnet("regnety_test"), SwAVHead(48, [512], 64, 128)).init_weights(seed=SEED + 1)
    assert not torch.equal(c.trunk.stem.conv.weight, a.trunk.stem.conv.weight)
