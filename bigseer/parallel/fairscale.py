"""FairScale FSDP as VISSL ran SEER (``flatten_parameters=False``, BN in their own fp32 units).

CUDA-only: on CPU FairScale's FSDP fails at the first forward (KeyError 'all_gather'), so it is refused
up front. fairscale is an optional extra (``pip install bigseer[fairscale]``), imported lazily.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from bigseer.checkpoint.pieces import Piece
from bigseer.errors import ConfigError
from bigseer.parallel.base import Parallel, call_on_model, sharded_params, trunk_of

_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_fpw_module.")


def _persistent_buffers(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, buffer) of the buffers a state dict would hold, without calling state_dict (collective here)."""
    out = []
    for mname, m in module.named_modules():
        for bname, b in m._buffers.items():
            if b is not None and bname not in m._non_persistent_buffers_set:
                out.append((f"{mname}.{bname}" if mname else bname, b))
    return out


def _clean(name: str) -> str:
    """A parameter name without FairScale's wrapper levels (the model's own key)."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def check_fairscale(device_type: str) -> None:
    """Refuse CPU runs and a missing package with one clear line each (before any collective)."""
    if device_type != "cuda" or not torch.cuda.is_available():
        raise ConfigError("backend fairscale is CUDA-only (its FSDP fails on CPU with KeyError 'all_gather'); "
                          "use backend fsdp or ddp on CPU")
    try:
        import fairscale  # noqa: F401
    except ImportError:
        raise ConfigError("backend fairscale needs the optional package: pip install 'bigseer[fairscale]' "
                          "(fairscale==0.4.13)") from None


class FairScaleParallel(Parallel):
    backend = "fairscale"

    def full_state_dict(self) -> dict[str, Any]:
        self.sync_bn_stats()
        with self.module.summon_full_params(recurse=True, writeback=False):
            return {k: v.detach().cpu().clone() for k, v in self.unwrapped.state_dict().items()}

    def run_on_full_params(self, fn: Callable[[nn.Module], Any]) -> Any:
        with torch.no_grad(), self.module.summon_full_params(recurse=True, writeback=True):
            return call_on_model(fn, self.unwrapped)

    def state_pieces(self) -> list[Piece]:
        """With ``flatten_parameters=False`` every parameter is sharded on its own: rank ``r`` holds elements
        ``[r ps, (r + 1) ps)`` of it flattened (``ps`` = shard size, the last shard padded), and the
        optimizer's state has the shard's shape. Names are the model's own (FairScale's wrapper prefixes
        removed), so a FairScale checkpoint resumes under fsdp / ddp / deepspeed and exports like any other.
        Runs on CUDA only (benchmarks/gpu_check.py exercises save / load / export)."""
        from bigseer.parallel.state import ensure_momentum, owner_of, tensor_piece

        ensure_momentum(self.optimizer)
        rank = torch.distributed.get_rank()
        params = {_clean(n): p for n, p in self.module.named_parameters()}
        pieces = [tensor_piece(f"model.{_clean(k)}", v, owner=owner_of(_clean(k)))
                  for k, v in _persistent_buffers(self.module)]
        for name, p in params.items():
            full = tuple(getattr(p, "_orig_size", p.shape))
            numel = math.prod(full)
            ps = p.data.numel()
            lo, hi = rank * ps, min((rank + 1) * ps, numel)
            ranges = [(lo, 0, hi - lo)] if hi > lo and getattr(p, "_is_sharded", False) else [(0, 0, numel)]
            pieces.append(Piece(f"model.{name}", full, p.data.reshape(-1), ranges))
            for key, v in self.optimizer.state.get(p, {}).items():
                if isinstance(v, torch.Tensor) and v.numel() == ps:
                    pieces.append(Piece(f"optim.{name}.{key}", full, v.reshape(-1), ranges))
        return pieces


def setup_fairscale(model: nn.Module, *, precision: str, device_type: str, syncbn: bool,
                    optimizer_factory: Callable[[Any], Any], param_groups: Callable[[nn.Module], Any],
                    grad_clip: float | None) -> FairScaleParallel:
    check_fairscale(device_type)
    from fairscale.nn.data_parallel import FullyShardedDataParallel as FSDP
    from fairscale.nn.wrap import enable_wrap, wrap

    if sharded_params(model):
        raise ConfigError("backend fairscale cannot hold _bigseer_sharded parameters; use backend fsdp")
    mixed = precision in ("fp16", "bf16")
    kw = dict(flatten_parameters=False, mixed_precision=mixed, fp32_reduce_scatter=mixed,
              compute_dtype=torch.float16 if precision == "fp16" else torch.bfloat16 if mixed else torch.float32)
    trunk = trunk_of(model)
    with enable_wrap(wrapper_cls=FSDP, **kw):
        for m in list(model.modules()):  # BN in its own fp32 unit, as VISSL's auto_wrap_bn did
            for name, child in list(m.named_children()):
                if isinstance(child, nn.modules.batchnorm._BatchNorm):
                    setattr(m, name, wrap(child, mixed_precision=False, compute_dtype=torch.float32))
        for stage in trunk.stages():
            for name, block in list(stage.named_children()):
                setattr(stage, name, wrap(block))
        module = FSDP(model, **kw)
    optimizer = optimizer_factory(param_groups(module))
    from fairscale.optim.grad_scaler import ShardedGradScaler

    scaler = ShardedGradScaler() if precision == "fp16" else None
    return FairScaleParallel(model, module, optimizer, precision, device_type, syncbn, scaler, grad_clip)
