"""SwAV training steps for the tests/gpu checks: a small SwAV model per device, the engine's step and optimizer
(``bigseer.trainer``; optionally with an injected fp16 overflow), whole-model snapshots and what the checks
assert about them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Small:
    """The small SwAV model and batch of the backend checks on one device."""

    model: str
    crops: str
    batch: int
    head_dims: tuple[int, ...]
    embed_dim: int
    prototypes: int
    steps: int


# cpu: crops of 64/32 px, not 32/16: at 16 px regnety_test's last stages are 1x1 and bf16 on CPU (oneDNN) then
# gives sporadic gradient spikes (1e14..1e31) after the first update, under ddp and fsdp alike (fp32 is clean)
SMALL = {"cpu": Small("regnety_test", "2x64+4x32", 4, (32,), 16, 32, 2),
         "cuda": Small("regnety_800mf", "2x96+4x48", 16, (1024,), 128, 3000, 3)}


def swav_config(device: str) -> Any:
    """The PretrainConfig of ``device``'s small SwAV model."""
    from bigseer.config import PretrainConfig

    s = SMALL[device]
    return PretrainConfig(model=s.model, head_dims=s.head_dims, embed_dim=s.embed_dim, num_prototypes=s.prototypes,
                          sinkhorn_iters=3, crops_for_assign=(0, 1))


def build_model(device: str, meta: bool = False) -> torch.nn.Module:
    """``device``'s small SwAV model (seed 0), on ``device`` or on meta (for backend fsdp)."""
    from bigseer.trainer import build_swav_model

    torch.manual_seed(0)
    if meta:
        with torch.device("meta"):
            return build_swav_model(swav_config(device), device="meta")
    return build_swav_model(swav_config(device)).to(device)


def make_crops(spec: str, batch: int, device: str, seed: int = 0) -> list[torch.Tensor]:
    """Random crop groups ``[n, B, 3, H, W]`` as ``SwAVModel.forward`` takes them, made on ``device``."""
    from bigseer.plan import parse_crops

    g = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(n, batch, 3, r, r, generator=g, device=device) for n, r in parse_crops(spec)]


def small_crops(device: str) -> list[torch.Tensor]:
    s = SMALL[device]
    return make_crops(s.crops, s.batch, device)


def lars(device: str, lr: float = 0.05) -> Callable[[Any], Any]:
    """The engine's optimizer factory (LARS as SEER ran it) for ``device``'s small model."""
    from bigseer.trainer import lars_factory

    return lars_factory(swav_config(device), lr)


def train_step(par: Any, crops: list[torch.Tensor], inject: bool = False, lr: float = 0.05) -> tuple[float, bool]:
    """The engine's SwAV step (``bigseer.trainer.swav_step``); ``inject`` multiplies the loss by inf on its way
    into the backward (an fp16 overflow). (loss, whether the step was applied)."""
    from bigseer.trainer import swav_step

    if inject:
        backward = par.backward
        par.backward = lambda loss: backward(loss * float("inf"))
    try:
        loss, applied = swav_step(par, crops, lr)
    finally:
        if inject:
            del par.backward  # the class's method again
    return float(loss.detach().float()), applied


def full_float_state(par: Any) -> dict[str, torch.Tensor]:
    """The whole model state (the backend's ``full_state_dict``: collective) as fp32 CPU tensors."""
    def clean(k: str) -> str:  # FairScale's wrapper levels, should its hooks leave them
        return k.replace("_fsdp_wrapped_module.", "").replace("_fpw_module.", "")

    return {clean(k): v.detach().float().cpu().clone() for k, v in par.full_state_dict().items()}


def trunk_weight_snapshot(par: Any) -> dict[str, torch.Tensor]:
    """Weights a skipped step must leave bitwise unchanged: all but BN running stats and the prototypes
    (``normalize_prototypes`` runs after every step, skipped or not, and may move them by an ulp)."""
    return {k: v for k, v in full_float_state(par).items()
            if "running" not in k and "num_batches" not in k and "prototypes" not in k}


def max_change(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    """Max |after - before| over the keys both have."""
    return max((float((after[k] - before[k]).abs().max()) for k in before if k in after and before[k].numel()),
               default=0.0)


def compare_states(ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Max |got - ref| over common keys, keys missing from got, keys only in got."""
    return {"diff": max_change(ref, got), "missing": sorted(set(ref) - set(got)), "extra": sorted(set(got) - set(ref))}


def pieces_as_full(pieces: list[Any]) -> dict[str, torch.Tensor]:
    """Each checkpoint piece's logical tensor (flat fp32 CPU) rebuilt from its ranges (one rank: all of it)."""
    out: dict[str, torch.Tensor] = {}
    for p in pieces:
        flat = out.setdefault(p.name, torch.full((math.prod(p.shape),), float("nan")))
        local = p.local.detach().reshape(-1).float().cpu()
        for g0, l0, n in p.ranges:
            flat[g0:g0 + n] = local[l0:l0 + n]
    return out


def run_steps(par: Any, crops: list[torch.Tensor], steps: int, inject: int = 0, extra: int = 6) -> dict[str, Any]:
    """Steps until ``steps`` were applied (at most ``steps + extra``: dynamic loss scaling skips the first ones
    while its scale comes down from 2^16); then, with a loss scaler and ``inject`` > 0, that many injected
    overflows and one more normal step. Losses, applied flags, loss scales, weight changes, the injection."""
    before = trunk_weight_snapshot(par)
    res: dict[str, Any] = {"losses": [], "applied": [], "scales": []}

    def one(inj: bool) -> None:
        loss, ok = train_step(par, crops, inj)
        res["losses"].append(loss)
        res["applied"].append(ok)
        res["scales"].append(par.loss_scale)

    while sum(res["applied"]) < steps and len(res["applied"]) < steps + extra:
        one(False)
    res["weight_change"] = max_change(before, trunk_weight_snapshot(par))
    if inject and par.loss_scale is not None:
        scale0, snap0 = par.loss_scale, trunk_weight_snapshot(par)
        for _ in range(inject):
            one(True)
        res["inject"] = {"count": inject, "applied": res["applied"][-inject:], "scale_before": scale0,
                         "scale_after": par.loss_scale, "weight_change": max_change(snap0, trunk_weight_snapshot(par))}
        one(False)
        res["inject"]["recovered"] = res["applied"][-1]
    return res


def assert_steps_ok(res: dict[str, Any]) -> None:
    """Finite losses, steps applied and weights moved; injected overflows skipped, weights kept, scale down."""
    n_inj = res["inject"]["count"] if "inject" in res else 0
    normal = res["losses"][:len(res["losses"]) - n_inj - 1] + res["losses"][-1:] if n_inj else res["losses"]
    assert all(math.isfinite(x) for x in normal), f"non-finite loss {res['losses']}"
    assert any(res["applied"]), f"no step applied (loss scales {res['scales']})"
    assert res["weight_change"] > 0, "weights unchanged after applied steps"
    inj = res.get("inject")
    if inj:
        assert not any(inj["applied"]), f"an injected overflow was applied: {inj['applied']}"
        assert inj["weight_change"] == 0, f"weights changed by {inj['weight_change']:.2e} over skipped steps"
        assert inj["scale_after"] < inj["scale_before"], f"loss scale not reduced: {inj}"
        assert inj["recovered"], "the step after the injected overflow(s) was not applied"
