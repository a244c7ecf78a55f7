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

ref32 is checked first. The bound grows with ``|ref32 - ref64|``, so an error in ref32 would widen the
bound meant to catch it: ref32 should be an independent fp32 evaluation (one process, plain torch), not
a result of the code under test. Every helper asserts, before using it, that ref32 is an fp32
evaluation of ref64's computation at all, by bounds that do not come from ref32:

- ``|ref32 - ref64| <= REF32_RTOL * |ref64|`` (per tensor; for a state, over the whole state), with
  ``REF32_RTOL = 1e-3``. fp32 rounding of a computation grows with the number ``n`` of terms summed into
  each output, as ``sqrt(n) u`` in the random-rounding model (``n u`` worst case; ``u = 2^-24``), times
  the computation's conditioning. In this suite ``n <= ~1e5`` (a conv / matmul / BN reduction over
  channels x kernel x batch x pixels) and BN over 4 samples amplifies by up to ~50, so
  ``50 sqrt(1e5) u = 9.4e-4``. Measured on every caller: at most 6.4e-5 (two SGD steps of the stand-in
  with per-rank BN over 4 samples, whole state), 2.4e-5 for losses. The bugs above are >= 1e-2;
- for a state with ``init`` and a float64 ``ref64``: ``|ref32 - ref64|_all <= FACTOR * |got - ref64|_all +
  floor``. ``got`` is another fp32 evaluation of the same training, so their errors, each summed over
  thousands of elements, are of the same size (seen: equal to 3 digits); an error planted in ref32 alone
  (tests/test_numerics.py: 1e-2 of the updates) makes ref32 the outlier. Only states: for a few elements
  one fp32 sample may be almost exact by luck (see above), a whole state is not. Only a float64 ``ref64``:
  where a second fp32 run stands in for it (tests/state_compare.py), ``got`` may share that run's rounding.
"""

from __future__ import annotations

from typing import Mapping

import torch

FACTOR = 8.0
EPS32 = torch.finfo(torch.float32).eps
REF32_RTOL = 1e-3


def _floor(ref64_norm: float) -> float:
    return 4 * EPS32 * ref64_norm + 1e-30


def check_ref32(ref32: torch.Tensor, ref64: torch.Tensor, what: str = "", rtol: float = REF32_RTOL) -> None:
    """``ref32`` is an fp32 evaluation of ``ref64``'s computation: ``|ref32 - ref64| <= rtol |ref64|`` (module
    docstring: a bound from the computation's size, not from ref32)."""
    ref64 = ref64.double()
    err, size = (ref32.double() - ref64).norm().item(), ref64.norm().item()
    assert err <= rtol * size + _floor(size), (
        f"{what}: ref32 is no fp32 evaluation of ref64's computation: |ref32 - ref64| = {err:.3e} > {rtol:g} x "
        f"|ref64| = {rtol * size:.3e} (tests/numerics.py: take ref32 from an independent one-process run)")


def fp32_bound(ref32: torch.Tensor, ref64: torch.Tensor, factor: float = FACTOR) -> float:
    """Allowed Frobenius distance from ``ref32`` for another fp32 evaluation of the same computation (no check of
    ``ref32`` itself: the ``assert_*`` helpers do that first)."""
    ref64 = ref64.double()
    err = (ref32.double() - ref64).norm().item()
    return factor * err + _floor(ref64.norm().item())


def assert_within_fp32_error(got: torch.Tensor, ref32: torch.Tensor, ref64: torch.Tensor, what: str = "",
                             factor: float = FACTOR) -> None:
    """``got`` is ``ref32`` up to this computation's fp32 rounding, after checking ``ref32`` against ``ref64``
    (see the module docstring)."""
    assert got.shape == ref32.shape == ref64.shape, (what, got.shape, ref32.shape, ref64.shape)
    check_ref32(ref32, ref64, what)
    dist = (got.double() - ref32.double()).norm().item()
    bound = fp32_bound(ref32, ref64, factor)
    assert dist <= bound, (f"{what}: |got - ref32| = {dist:.3e} > {bound:.3e} = {factor:g} x |ref32 - ref64| "
                           f"({(ref32.double() - ref64.double()).norm().item():.3e}) + floor")


def _state_norm(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor] | None, keys: list[str]) -> float:
    """Frobenius norm of ``a - b`` (or of ``a``) over ``keys``, in float64."""
    return sum(((a[k].double() - b[k].double()) if b is not None else a[k].double()).norm().item() ** 2
               for k in keys) ** 0.5


def assert_states_within_fp32_error(got: Mapping[str, torch.Tensor], ref32: Mapping[str, torch.Tensor],
                                    ref64: Mapping[str, torch.Tensor], what: str = "",
                                    init: Mapping[str, torch.Tensor] | None = None,
                                    factor: float = FACTOR) -> None:
    """:func:`assert_within_fp32_error` for every floating tensor of ``ref32`` (same keys required); with
    ``init`` (the state before training) plus the update-proportional allowance of the module docstring.
    ``ref32`` is checked first: over the whole state (and, without ``init``, per tensor) against
    ``REF32_RTOL``; with ``init`` also against ``got``'s own distance to ``ref64``."""
    assert set(got) == set(ref32), (what, sorted(set(got) ^ set(ref32))[:5])
    keys = [k for k, v in ref32.items() if v.is_floating_point()]
    err, size = _state_norm(ref32, ref64, keys), _state_norm(ref64, None, keys)
    assert err <= REF32_RTOL * size + _floor(size), (
        f"{what}: ref32 is no fp32 evaluation of ref64's computation: |ref32 - ref64|_all = {err:.3e} > "
        f"{REF32_RTOL:g} x |ref64|_all = {REF32_RTOL * size:.3e} (tests/numerics.py: take ref32 from an "
        "independent one-process run)")
    rho = 0.0
    if init is not None:
        got_err = _state_norm(got, ref64, keys)
        exact = all(ref64[k].dtype == torch.float64 for k in keys)  # else a second fp32 run stands in for ref64,
        assert not exact or err <= factor * got_err + _floor(size), (  # and got may share its rounding
            f"{what}: ref32 is the outlier: |ref32 - ref64|_all = {err:.3e} > {factor:g} x |got - ref64|_all "
            f"({got_err:.3e}) + floor (tests/numerics.py: take ref32 from an independent one-process run)")
        rho = err / max(_state_norm(ref64, init, keys), 1e-30)
    else:
        for k in keys:
            check_ref32(ref32[k], ref64[k], f"{what}: {k}")
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
