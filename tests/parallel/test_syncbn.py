"""GroupSyncBatchNorm == one BatchNorm over the group's whole batch (output, running stats, grads).

In float64: the group's statistics are all-reduced partial sums (another summation order than one BN
over the batch), so fp32 would only agree to rounding; in float64 1e-10 relative is far above it."""

import pytest
import torch
from torch import nn

from bigseer.errors import ConfigError
from bigseer.parallel.syncbn import GroupSyncBatchNorm, convert_syncbn, make_syncbn_groups
from tests.distributed_utils import run_distributed
from tests.numerics import assert_close_f64

pytestmark = pytest.mark.numerics  # re-run by .ci/run under another kernel dispatch

C, B = 5, 3  # channels, images per rank


def _data(world):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(world * B, C, 4, 4, generator=g, dtype=torch.float64) * 2 + 1
    w = torch.randn(world * B, C, 4, 4, generator=g, dtype=torch.float64)  # loss weights: non-trivial grads
    gamma, beta = torch.randn(C, generator=g, dtype=torch.float64), torch.randn(C, generator=g, dtype=torch.float64)
    return x, w, gamma, beta


def _bn(gamma, beta):
    bn = nn.BatchNorm2d(C, momentum=0.3, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.copy_(gamma)
        bn.bias.copy_(beta)
    return bn


def _rank_fn(rank, world, group_sizes):
    out = {}
    for gs in group_sizes:
        x, w, gamma, beta = _data(world)
        model = nn.Sequential(_bn(gamma, beta))
        convert_syncbn(model, make_syncbn_groups(gs))
        assert isinstance(model[0], GroupSyncBatchNorm)
        xr = x[rank * B:(rank + 1) * B].clone().requires_grad_(True)
        y = model(xr)
        y = model(xr.detach() * 0.5 + 0.1) * 0 + y  # a second forward: running stats updated twice
        (y * w[rank * B:(rank + 1) * B]).sum().backward()
        bn = model[0]
        out[gs] = dict(y=y.detach(), gx=xr.grad, rm=bn.running_mean.clone(), rv=bn.running_var.clone(),
                       n=int(bn.num_batches_tracked))
    try:
        make_syncbn_groups(3)
        out["error"] = None
    except ConfigError as exc:
        out["error"] = str(exc)
    return out


def test_group_syncbn_equals_full_batch_bn_world4_groups_2_and_4():
    world = 4
    results = run_distributed(_rank_fn, world_size=world, args=((2, 4),))
    x, w, gamma, beta = _data(world)
    for gs in (2, 4):
        for start in range(0, world, gs):
            sl = slice(start * B, (start + gs) * B)
            bn = _bn(gamma, beta)
            xg = x[sl].clone().requires_grad_(True)
            y = bn(xg)
            y = bn(xg.detach() * 0.5 + 0.1) * 0 + y
            (y * w[sl]).sum().backward()
            for r in range(start, start + gs):
                res = results[r][gs]
                k = r - start
                assert_close_f64(res["y"], y.detach()[k * B:(k + 1) * B], "output")
                assert_close_f64(res["gx"], xg.grad[k * B:(k + 1) * B], "input grad")
                assert_close_f64(res["rm"], bn.running_mean, "running mean")
                assert_close_f64(res["rv"], bn.running_var, "running var")
                assert res["n"] == 2
        if gs == 2:  # the two groups really differ (else the test could not tell groups apart)
            assert not torch.allclose(results[0][2]["rm"], results[2][2]["rm"])
    assert "does not divide world_size=4" in results[0]["error"]


def test_syncbn_group_size_validation_single_process():
    with pytest.raises(ConfigError, match="does not divide"):
        make_syncbn_groups(3)
    with pytest.raises(ConfigError, match="positive integer"):
        make_syncbn_groups(0)
    bn = GroupSyncBatchNorm(C, dtype=torch.float64)  # no group: same as BatchNorm2d
    ref = nn.BatchNorm2d(C, dtype=torch.float64)
    x = torch.randn(4, C, 3, 3, dtype=torch.float64)
    assert_close_f64(bn(x), ref(x), "output")
    assert_close_f64(bn.running_var, ref.running_var, "running var")
