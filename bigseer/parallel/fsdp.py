"""PyTorch FSDP2 (``fully_shard``) as VISSL sharded SEER-10B, applied from outside the model.

Units, innermost first: every BatchNorm in its own unit with fp32 parameters (output cast back to the
compute dtype), every conv with at least ``large_unit_threshold`` parameter elements (VISSL: 1e8), every
RegNet block, the head (fp32: prototype scores stay fp32), then the root (stem and the rest).
``_bigseer_sharded`` parameters are ignored (neither sharded nor reduced). Keys are unchanged:
``get_model_state_dict`` gives the model's own keys.

A model built on ``device="meta"`` is sharded first, then only each rank's shards are allocated and
initialised by the model's own ``init_weights`` (``bigseer.parallel.meta_init.materialize_meta``) on the
first real device (CUDA's current device when available, else CPU): the values of an eager build.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from bigseer.distributed import is_distributed
from bigseer.parallel.base import Parallel, gather_sharded_entries, sharded_params, trunk_of
from bigseer.parallel.precision import DTYPES, make_scaler

DEFAULT_LARGE_UNIT = int(1e8)


def fsdp_units(model: nn.Module, large_unit_threshold: int = DEFAULT_LARGE_UNIT) -> list[tuple[str, nn.Module, str]]:
    """The FSDP units of ``model`` in wrapping order: ``(qualified name, module, kind)`` with kind in
    ``bn``, ``conv``, ``block``, ``head``, ``root``. Works on meta models (used by the planner)."""
    names = {id(m): n for n, m in model.named_modules()}
    trunk = trunk_of(model)
    units: list[tuple[str, nn.Module, str]] = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and any(True for _ in m.parameters(recurse=False)):
            units.append((names[id(m)], m, "bn"))
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.weight.numel() >= large_unit_threshold:
            units.append((names[id(m)], m, "conv"))
    for b in trunk.blocks():
        units.append((names[id(b)], b, "block"))
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module) and head is not trunk and any(True for _ in head.parameters()):
        units.append((names[id(head)], head, "head"))
    units.append(("", model, "root"))
    return units


def shard_fsdp2(model: nn.Module, precision: str, device_type: str,
                large_unit_threshold: int = DEFAULT_LARGE_UNIT) -> nn.Module:
    """Apply ``fully_shard`` per unit (see ``fsdp_units``) in place; returns ``model``."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device_type, (torch.distributed.get_world_size(),))
    ignored = set(sharded_params(model)) or None
    if precision == "fp32":
        compute = bn_policy = head_policy = MixedPrecisionPolicy()
    else:
        dtype = DTYPES[precision]
        compute = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        bn_policy = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32, output_dtype=dtype)
        # param_dtype fp32 (not None) so the low-precision trunk features are cast to fp32 on the way in
        head_policy = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    for _, m, kind in fsdp_units(model, large_unit_threshold):
        policy = {"bn": bn_policy, "head": head_policy}.get(kind, compute)
        fully_shard(m, mesh=mesh, mp_policy=policy, ignored_params=ignored)
    return model


class FSDPParallel(Parallel):
    """FSDP2: parameters and their optimizer state are ``Shard(0)`` DTensors, so checkpoint pieces are
    row blocks (``bigseer.parallel.state``); BN buffers are replicated."""

    backend = "fsdp"

    def _clip(self) -> None:
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in self.unwrapped.parameters() if p.grad is not None],
                                           self.grad_clip, foreach=False)

    def full_state_dict(self) -> dict[str, Any]:
        if not is_distributed():
            return super().full_state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        self.sync_bn_stats()
        sd = get_model_state_dict(self.unwrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return gather_sharded_entries(self.unwrapped, sd)


def real_device(device_type: str) -> torch.device:
    """The device a meta model is materialised on: ``device_type`` itself unless it is ``meta``, where
    it is CUDA's current device when available, else CPU."""
    if device_type == "meta":
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device_type)


def setup_fsdp(model: nn.Module, *, precision: str, device_type: str, syncbn: bool,
               optimizer_factory: Callable[[Any], Any], param_groups: Callable[[nn.Module], Any],
               grad_clip: float | None, large_unit_threshold: int = DEFAULT_LARGE_UNIT,
               init_seed: int | None = None) -> FSDPParallel:
    from bigseer.parallel.meta_init import is_meta_model, materialize_meta

    on_meta = is_meta_model(model)
    if on_meta:
        device = real_device(device_type)
        device_type = device.type
    if is_distributed():
        shard_fsdp2(model, precision, device_type, large_unit_threshold)
        scaler = make_scaler(precision, device_type, sharded=True)
        autocast_precision = "fp32"  # the MixedPrecisionPolicy casts
    else:  # one process: plain model, autocast gives the same compute dtype
        scaler = make_scaler(precision, device_type)
        autocast_precision = precision
    if on_meta:  # after sharding: each rank allocates and initialises only its shards
        materialize_meta(model, device, seed=init_seed)
    optimizer = optimizer_factory(param_groups(model))
    return FSDPParallel(model, model, optimizer, precision, device_type, syncbn, scaler, grad_clip,
                        autocast_precision=autocast_precision)
