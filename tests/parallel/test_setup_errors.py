"""bigseer.parallel.setup: clear one-line errors before any work, and the one-process path."""

import pytest
import torch

from bigseer import parallel
from bigseer.errors import ConfigError
from bigseer.optim import LARS
from tests.parallel.standin import make_batch, make_model


def _sgd(groups):
    return torch.optim.SGD(groups, lr=0.1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(backend="horovod"), "backend='horovod' is invalid"),
    (dict(backend="ddp", precision="fp8"), "precision='fp8' is invalid"),
    (dict(backend="fairscale"), "fairscale is CUDA-only"),
    (dict(backend="deepspeed"), "needs a DeepSpeed JSON config"),
    (dict(backend="deepspeed", ds_config="zero9"), "not found"),
    (dict(backend="deepspeed", ds_config={"zero_optimization": {"stage": 5}}), "stage=5"),
    (dict(backend="fsdp", checkpointing="sometimes"), "checkpointing"),
    (dict(backend="ddp", syncbn_group_size=0), "syncbn_group_size"),
])
def test_setup_rejects_bad_input(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        parallel.setup(make_model(0), optimizer_factory=_sgd, **kwargs)


def test_sharded_params_refused_under_deepspeed():
    model = make_model(0, shard=torch.ones(2))
    with pytest.raises(ConfigError, match="_bigseer_sharded"):
        parallel.setup(model, backend="deepspeed", ds_config="zero2_fp32", optimizer_factory=_sgd)


@pytest.mark.parametrize("backend", ["ddp", "fsdp"])
def test_one_process_runs_plain_model_with_exclusion_groups(backend):
    p = parallel.setup(make_model(0), backend=backend, precision="bf16", checkpointing="all",
                       optimizer_factory=lambda g: LARS(g, lr=0.1), exclude_bn_bias=True)
    assert p.module is p.unwrapped and p.loss_scale is None
    assert [g["lars_exclude"] for g in p.optimizer.param_groups] == [False, True]
    before = p.unwrapped.head.weight.detach().clone()
    p.backward(p.forward(make_batch(2)))
    assert p.step()
    p.set_lr(0.05)
    assert {g["lr"] for g in p.optimizer.param_groups} == {0.05}
    assert not torch.equal(before, p.unwrapped.head.weight)
    assert list(p.full_state_dict()) == list(make_model(0).state_dict())
    p.set_frozen(["head.weight"], True)
    head, stem = p.unwrapped.head.weight.detach().clone(), p.unwrapped.trunk.stem.conv.weight.detach().clone()
    p.zero_grad()
    p.backward(p.forward(make_batch(2)))
    assert p.step()
    assert torch.equal(head, p.unwrapped.head.weight) and not torch.equal(stem, p.unwrapped.trunk.stem.conv.weight)
    with pytest.raises(ConfigError, match="unknown parameter"):
        p.set_frozen(["head.nope"], True)


@pytest.mark.parametrize("stage", [1, 3])
def test_lars_with_merged_groups_refused_under_zero_before_any_work(stage):
    with pytest.raises(ConfigError, match=f"LARS under DeepSpeed ZeRO stage {stage}: param group 0 holds"):
        parallel.setup(make_model(0), backend="deepspeed", ds_config=f"zero{stage}_fp32",
                       optimizer_factory=lambda g: LARS([q for gr in g for q in gr["params"]], lr=0.1))


def test_meta_model_refused_outside_fsdp():
    from bigseer.models import build_regnet

    with pytest.raises(ConfigError, match="backend ddp needs a materialised model"):
        parallel.setup(build_regnet("regnety_test", device="meta"), backend="ddp",
                       optimizer_factory=lambda g: torch.optim.SGD(g, lr=0.1))
