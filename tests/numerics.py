"""Tolerances derived from the computation, for comparisons that are not bitwise claims.

Two fp32 computations of the same maths differ by rounding: other summation orders (all-reduce vs one
process, DeepSpeed buckets vs DDP buckets), other kernels (MKL / oneDNN pick code paths by ISA and by
memory alignment: a tensor read from a file or sliced from a flat buffer runs another kernel than a
freshly allocated one). How large that rounding is depends on the computation (BN over 4 samples
amplifies it, a linear map does not), so a hand-picked ``rtol`` is either loose or machine-dependent.

The rule used here: run the reference once more in float64. ``|ref32 - ref64|`` is the fp32 error of
*this* computation on *this* data; any other correct fp32 ordering has an error of the same size, so
``|got - ref32| <= FACTOR * |ref32 - ref64| + floor`` (per tensor, Frobenius norms). ``FACTOR = 8``
covers two independent errors of the same distribution with a wide margin; the floor (a few fp32 ulps
of ``|ref64|``) handles the rare case where ref32 happens to be almost exact. Real bugs are orders of
magnitude above this (a missing SyncBN: 2e-2 relative; LARS without its all-reduce: 4e-2).

For a state after training steps, the error of a small tensor (a 4-element bias) estimated from one
fp32 sample is noisy: ref32 may be almost exact by luck. There the error is measured on the whole
state and attributed to each tensor in proportion to how far training moved it (rounding enters
through the updates): ``rho = |ref32 - ref64|_all / |ref64 - init|_all`` and each tensor also allows
``FACTOR * rho * |ref64_k - init_k|``.
"""

from __future__ import annotations

from typing import Mapping

import torch

FACTOR = 8.0
EPS32 = torch.finfo(torch.float32).eps


def fp32_bound(ref32: torch.Tensor, ref64: torch.Tensor, factor: float = FACTOR) -> float:
    """Allowed Frobenius distance from ``ref32`` for another fp32 evaluation of the same computation."""
    ref64 = ref64.double()
    err = (ref32.double() - ref64).norm().item()
    floor = 4 * EPS32 * ref64.norm().item() + 1e-30
    return factor * err + floor


def assert_within_fp32_error(got: torch.Tensor, ref32: torch.Tensor, ref64: torch.Tensor, what: str = "",
                             factor: float = FACTOR) -> None:
    """``got`` is ``ref32`` up to this computation's fp32 rounding (see the module docstring)."""
    assert got.shape == ref32.shape == ref64.shape, (what, got.shape, ref32.shape, ref64.shape)
    dist = (got.double() - ref32.double()).norm().item()
    bound = fp32_bound(ref32, ref64, factor)
    assert dist <= bound, (f"{what}: |got - ref32| = {dist:.3e} > {bound:.3e} = {factor:g} x |ref32 - ref64| "
                           f"({(ref32.double() - ref64.double()).norm().item():.3e}) + floor")


def assert_states_within_fp32_error(got: Mapping[str, torch.Tensor], ref32: Mapping[str, torch.Tensor],
                                    ref64: Mapping[str, torch.Tensor], what: str = "",
                                    init: Mapping[str, torch.Tensor] | None = None,
                                    factor: float = FACTOR) -> None:
    """:func:`assert_within_fp32_error` for every floating tensor of ``ref32`` (same keys required); with
    ``init`` (the state before training) plus the update-proportional allowance of the module docstring."""
    assert set(got) == set(ref32), (what, sorted(set(got) ^ set(ref32))[:5])
    keys = [k for k, v in ref32.items() if v.is_floating_point()]
    rho = 0.0
    if init is not None:
        err = sum((ref32[k].double() - ref64[k].double()).norm().item() ** 2 for k in keys) ** 0.5
        moved = sum((ref64[k].double() - init[k].double()).norm().item() ** 2 for k in keys) ** 0.5
        rho = err / max(moved, 1e-30)
    for k in keys:
        dist = (got[k].double() - ref32[k].double()).norm().item()
        bound = fp32_bound(ref32[k], ref64[k], factor)
        if init is not None:
            bound += factor * rho * (ref64[k].double() - init[k].double()).norm().item()
        assert dist <= bound, f"{what}: {k}: |got - ref32| = {dist:.3e} > bound {bound:.3e} (tests/numerics.py)"


def assert_close_f64(a: torch.Tensor, b: torch.Tensor, what: str = "") -> None:
    """Two float64 evaluations of the same function: rounding ~1e-16 per op, so 1e-9 relative to the
    largest magnitude is far above any ordering or kernel difference and far below any mapping bug."""
    a, b = a.double(), b.double()
    scale = max(a.abs().max().item(), b.abs().max().item(), 1e-30)
    diff = (a - b).abs().max().item()
    assert diff <= 1e-9 * scale, f"{what}: max |a - b| = {diff:.3e} > 1e-9 x {scale:.3e}"
