"""Meta-device initialisation: materialise a (possibly FSDP2-sharded) model shard by shard.

Build the model on ``device="meta"``, apply ``fully_shard``, then :func:`materialize_meta` allocates only this
rank's shard of every tensor (``to_empty``) and calls the model's own ``init_weights(seed, rows_of)`` with
``rows_of`` mapping each DTensor to its local rows: the model's init is a function of (seed, name, row)
(:mod:`bigseer.models.init`), so the shards hold exactly the values an eager build gives (the torchtitan
recipe, without a second copy of the init rules here). ``_bigseer_*`` attributes of parameters (sharded
prototypes) survive ``to_empty``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bigseer.errors import ConfigError

__all__ = ["is_meta_model", "materialize_meta", "local_tensor", "dtensor_rows"]


def is_meta_model(model: nn.Module) -> bool:
    """True when any parameter or buffer of ``model`` is on the meta device (DTensors included)."""
    return any(t.device.type == "meta" for t in (*model.parameters(), *model.buffers()))


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The locally stored part of ``t`` (a DTensor's local shard, else ``t`` itself)."""
    return t.to_local() if hasattr(t, "to_local") else t


def dtensor_rows(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``rows_of`` for FSDP2: a ``Shard(0)`` DTensor's local rows and the global index of the first one."""
    if not hasattr(t, "to_local"):
        return t, 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return t.to_local(), int(offset[0]) if len(offset) else 0


@torch.no_grad()
def materialize_meta(model: nn.Module, device: Any, seed: int | None = None) -> nn.Module:
    """Allocate ``model``'s meta tensors on ``device`` (only the local shard of FSDP2 DTensors) and initialise
    them with ``model.init_weights(seed=seed, rows_of=dtensor_rows)``. Returns ``model``."""
    init = getattr(model, "init_weights", None)
    if init is None:
        raise ConfigError(f"meta init: {type(model).__name__} has no init_weights(seed, rows_of); build it on a "
                          "real device")
    extras = {n: {k: v for k, v in vars(p).items() if k.startswith("_bigseer")} for n, p in model.named_parameters()}
    model.to_empty(device=torch.device(device))
    for n, p in model.named_parameters():
        for k, v in extras.get(n, {}).items():
            setattr(p, k, v)
    init(seed=seed, rows_of=dtensor_rows)
    return model
