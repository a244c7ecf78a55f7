"""SyncBN on one device in a 1-rank group (gloo on cpu, NCCL on cuda) == nn.BatchNorm2d: outputs, grads,
running stats. One GPU means world size 1; the 2-rank comparison is tests/parallel/test_syncbn.py (gloo)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
import torch
from torch import nn

from tests.gpu.devices import CUDA, DEVICES, collect, result, run_one_rank

C = 16
TOL = 1e-4


def _input(device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(8, C, 10, 10, generator=g) * 3 + 1).to(device)


def _bn(device: str) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(C).to(device)


def compare(ref: nn.BatchNorm2d, fn: Callable[[torch.Tensor], torch.Tensor], mod: nn.Module,
            x: torch.Tensor) -> dict[str, float]:
    """Max |diff| of ``fn`` (whose parameters and stats are ``mod``'s) vs ``ref``: output, input grad,
    weight and bias grads, running mean and variance."""
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(x.device)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ref(xa), fn(xb)
    (ya * gy).sum().backward()
    (yb * gy).sum().backward()

    def diff(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.detach().float() - b.detach().float()).abs().max())

    return {"out": diff(ya, yb), "dx": diff(xa.grad, xb.grad), "dw": diff(ref.weight.grad, mod.weight.grad),
            "db": diff(ref.bias.grad, mod.bias.grad), "mean": diff(ref.running_mean, mod.running_mean),
            "var": diff(ref.running_var, mod.running_var)}


def _group_syncbn(device: str) -> dict[str, float]:
    import torch.distributed as dist

    from bigseer.parallel import GroupSyncBatchNorm

    ref = _bn(device)
    sbn = GroupSyncBatchNorm(C, process_group=dist.group.WORLD).to(device)
    sbn.load_state_dict(ref.state_dict())
    return compare(ref, sbn, sbn, _input(device))


def _group_syncbn_forced(device: str) -> dict[str, Any]:
    """On one rank GroupSyncBatchNorm skips its all-reduce; a pretended group of 2 sends the stats and the
    backward's sums through the backend (an identity on one rank)."""
    import torch.distributed as dist

    import bigseer.parallel.syncbn as syncbn_mod

    calls: list[int] = []
    real = syncbn_mod.dist.all_reduce

    def counting(*a: Any, **k: Any) -> Any:
        calls.append(1)
        return real(*a, **k)

    with mock.patch.object(syncbn_mod, "get_world_size", lambda group=None: 2), \
            mock.patch.object(syncbn_mod.dist, "all_reduce", counting):
        errs = _group_syncbn(device)
    return {"errs": errs, "calls": len(calls), "backend": dist.get_backend()}


def _torch_syncbn(device: str) -> dict[str, dict[str, float]]:
    """nn.SyncBatchNorm, and its autograd function driven directly (a 1-rank group makes the module skip the
    sync): CUDA batch_norm_stats / gather_stats_with_counts kernels and the NCCL all-gather."""
    import torch.distributed as dist
    from torch.nn.modules._functions import SyncBatchNorm as SyncBNFunction

    ref, x = _bn(device), _input(device)
    sbn = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(C))).to(device)[0]
    sbn.load_state_dict(ref.state_dict())
    module = compare(ref, sbn, sbn, x)
    ref2, fn_bn = _bn(device), _bn(device)
    fn_bn.load_state_dict(ref2.state_dict())

    def through_fn(t: torch.Tensor) -> torch.Tensor:
        return SyncBNFunction.apply(t, fn_bn.weight, fn_bn.bias, fn_bn.running_mean, fn_bn.running_var, fn_bn.eps,
                                    fn_bn.momentum, dist.group.WORLD, 1)

    return {"module": module, "function": compare(ref2, through_fn, fn_bn, x)}


def _rank_fn(device: str) -> dict[str, Any]:
    checks = {"group": lambda: _group_syncbn(device), "forced": lambda: _group_syncbn_forced(device)}
    if device == "cuda":
        checks["torch"] = lambda: _torch_syncbn(device)
    return collect(checks)


@pytest.fixture(scope="module")
def results(request: pytest.FixtureRequest) -> dict[str, Any]:
    return run_one_rank(_rank_fn, request.param)


@pytest.mark.parametrize("results", DEVICES, indirect=True)
def test_group_syncbn_matches_batchnorm(results: dict[str, Any]) -> None:
    errs = result(results, "group")
    assert max(errs.values()) < TOL, errs


@pytest.mark.parametrize("results", DEVICES, indirect=True)
def test_group_syncbn_through_the_backend(results: dict[str, Any]) -> None:
    forced = result(results, "forced")
    assert max(forced["errs"].values()) < TOL, forced
    assert forced["calls"] >= 2, forced  # forward stats + backward sums
    assert results["imported_not_on_device"] == []


@pytest.mark.parametrize("results", [CUDA], indirect=True)
def test_torch_syncbn_cuda_kernels_match_batchnorm(results: dict[str, Any]) -> None:
    got = result(results, "torch")
    assert max(got["module"].values()) < TOL and max(got["function"].values()) < TOL, got
