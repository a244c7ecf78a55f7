"""DistributedDataParallel: the baseline every other backend is tested against.

Buffers are not broadcast from rank 0 at each forward (BN stats are averaged explicitly before any
checkpoint or export instead). ``_bigseer_sharded`` parameters are left out of gradient averaging.
With one process and no process group the model runs unwrapped.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bigseer.distributed import is_distributed
from bigseer.parallel.base import Parallel
from bigseer.parallel.precision import make_scaler


def wrap_ddp(model: nn.Module, device_type: str) -> nn.Module:
    """``model`` wrapped in DDP (gradient buckets as views, no buffer broadcast); unchanged without a group."""
    if not is_distributed():
        return model
    ignore = {n for n, p in model.named_parameters() if getattr(p, "_bigseer_sharded", False)}
    # torch's DDP matches top-level params as ".name" in one place and "name" in another: give both
    ignore |= {f".{n}" for n in ignore if "." not in n}
    if ignore:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, list(ignore))
    device_ids = None
    if device_type == "cuda":
        device_ids = [next(model.parameters()).device.index]
    return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False,
                                   gradient_as_bucket_view=True)


class DDPParallel(Parallel):
    backend = "ddp"


def setup_ddp(model: nn.Module, *, precision: str, device_type: str, syncbn: bool,
              optimizer_factory: Callable[[Any], Any], param_groups: Callable[[nn.Module], Any],
              grad_clip: float | None) -> DDPParallel:
    module = wrap_ddp(model, device_type)
    optimizer = optimizer_factory(param_groups(model))
    # the sharded scaler all-reduces "found inf", so ranks agree on a skip even when the inf sits in a
    # _bigseer_sharded parameter's gradient (which DDP does not all-reduce)
    scaler = make_scaler(precision, device_type, sharded=is_distributed())
    return DDPParallel(model, module, optimizer, precision, device_type, syncbn, scaler, grad_clip)
