"""tests/numerics.py itself: an fp32 reference with a planted error is refused before it can widen the bound
meant to catch it, while correct fp32 references of the same computation pass.

The computation: two SGD steps of a small conv + BatchNorm + linear net on a batch of 16 in four parts, in
float64 (ref64), in fp32 ("got") and in fp32 in the order of 2 data-parallel ranks (gradients summed pairwise, and
channels-last convolutions: other summation orders and kernels; "two_rank"). Planted errors: 1e-2 of the losses,
of the state or of its updates."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.numerics import (
    REF32_RTOL,
    assert_states_within_fp32_error,
    assert_within_fp32_error,
    check_ref32,
    fp32_bound,
)

pytestmark = pytest.mark.numerics  # re-run by .ci/run under another kernel dispatch


def _net(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    return net.to(dtype)


def _train(dtype: torch.dtype, two_rank: bool) -> tuple[torch.Tensor, dict, dict]:
    """(first step's per-quarter losses, state after 2 SGD steps, initial state). Each quarter of the batch of 16
    is forwarded apart (BN over its own 4 samples, as without SyncBN) and their mean loss is minimised; with
    ``two_rank`` the quarters' gradients are summed pairwise (2 ranks of 2, then the all-reduce) instead of in
    sequence, and the convolution runs channels-last (another kernel)."""
    net = _net(dtype)
    init = {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}
    fmt = torch.channels_last if two_rank else torch.contiguous_format
    net = net.to(memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(2):
        x = torch.randn(16, 3, 8, 8, generator=g).to(dtype).contiguous(memory_format=fmt)
        per_part = [net(part).square().mean() for part in x.chunk(4)]
        grads = [torch.autograd.grad(loss, list(net.parameters())) for loss in per_part]
        for p, *gs in zip(net.parameters(), *grads):
            p.grad = ((gs[0] + gs[1]) + (gs[2] + gs[3]) if two_rank else ((gs[0] + gs[1]) + gs[2]) + gs[3]) / 4
        opt.step()
        opt.zero_grad()
        losses.append(torch.stack([p.detach() for p in per_part]))
    state = {k: v.detach().clone() for k, v in net.state_dict().items() if k in init}
    return losses[0], state, init


@pytest.fixture(scope="module")
def runs():
    return {name: _train(dtype, two_rank) for name, dtype, two_rank in
            (("ref64", torch.float64, False), ("got", torch.float32, False), ("two_rank", torch.float32, True))}


def _weights(state: dict) -> dict:
    return {k: v for k, v in state.items() if "running" not in k}


def test_correct_fp32_references_pass(runs):
    """The one-process fp32 run and the 2-rank-order run are within each other's fp32 error."""
    (loss64, w64, init), (loss, w, _), (loss2, w2, _) = runs["ref64"], runs["got"], runs["two_rank"]
    assert_within_fp32_error(loss, loss2, loss64, "losses")
    assert_states_within_fp32_error(_weights(w), _weights(w2), _weights(w64), "weights", init)
    stats = {k: v for k, v in w.items() if "running" in k}
    assert_states_within_fp32_error(stats, {k: w2[k] for k in stats}, {k: w64[k] for k in stats}, "BN stats")


def test_planted_error_in_ref32_is_refused_though_the_old_bound_accepted_it(runs):
    """ref32 = a 2-rank-order result with a 1e-2 relative error planted: the bound alone (8 x |ref32 - ref64|)
    would accept the correct run against it (that is the widening); the check of ref32 refuses it first."""
    (loss64, w64, init), (loss, w, _), (loss2, w2, _) = runs["ref64"], runs["got"], runs["two_rank"]
    wrong = loss2 * (1 + 1e-2)
    assert (loss - wrong).norm() <= fp32_bound(wrong, loss64)  # the unchecked bound is fooled
    with pytest.raises(AssertionError, match="ref32 is no fp32 evaluation"):
        assert_within_fp32_error(loss, wrong, loss64, "losses")
    with pytest.raises(AssertionError, match="ref32 is no fp32 evaluation"):
        check_ref32(wrong, loss64)
    # a state 1e-2 off as a whole: the REF32_RTOL cap
    w_wrong = {k: v * (1 + 1e-2) for k, v in _weights(w2).items()}
    with pytest.raises(AssertionError, match="ref32 is no fp32 evaluation"):
        assert_states_within_fp32_error(_weights(w), w_wrong, _weights(w64), "weights", init)
    # BN running stats (no init) 1e-2 off in one tensor: the per-tensor cap
    stats = {k: v for k, v in w.items() if "running" in k}
    s_wrong = {k: w2[k] * (1 + 1e-2) if k.endswith("running_var") else w2[k] for k in stats}
    with pytest.raises(AssertionError, match="ref32 is no fp32 evaluation"):
        assert_states_within_fp32_error(stats, s_wrong, {k: w64[k] for k in stats}, "BN stats")


def test_planted_error_in_ref32_updates_is_refused_below_the_cap(runs):
    """1e-2 of the updates (far below REF32_RTOL of the weights) would widen every tensor's allowance through
    rho; ref32 is then 8x farther from ref64 than the correct run is, and refused as the outlier."""
    (_, w64, init), (_, w, _), (_, w2, _) = runs["ref64"], runs["got"], runs["two_rank"]
    w_wrong = {k: init[k] + (v - init[k]) * (1 + 1e-2) for k, v in _weights(w2).items()}
    size = sum(v.double().norm() ** 2 for v in _weights(w64).values()) ** 0.5
    err = sum((w_wrong[k].double() - v.double()).norm() ** 2 for k, v in _weights(w64).items()) ** 0.5
    assert err < REF32_RTOL * size  # the cap alone would let it through
    with pytest.raises(AssertionError, match="ref32 is the outlier"):
        assert_states_within_fp32_error(_weights(w), w_wrong, _weights(w64), "weights", init)


def test_a_bug_in_got_still_fails_against_a_correct_ref32(runs):
    """The bound keeps its purpose: got with 1e-3 of its updates wrong fails against the 2-rank-order ref32."""
    (_, w64, init), (_, w, _), (_, w2, _) = runs["ref64"], runs["got"], runs["two_rank"]
    bad = {k: init[k] + (v - init[k]) * (1 + 1e-3) for k, v in _weights(w).items()}
    with pytest.raises(AssertionError, match=r"\|got - ref32\|"):
        assert_states_within_fp32_error(bad, _weights(w2), _weights(w64), "weights", init)
