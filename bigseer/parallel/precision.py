"""Precision names, autocast contexts and loss scalers shared by the backends.

``"fp32"``: nothing. ``"bf16"``: bf16 compute (autocast or FSDP2 ``MixedPrecisionPolicy``), no scaler.
``"fp16"``: fp16 compute with dynamic loss scaling: a step whose gradients hold inf/nan is skipped and
the scale multiplied by 0.5 (torch ``GradScaler``; ``ShardedGradScaler`` for FSDP2 so every rank
agrees on the skip). BatchNorm statistics, Sinkhorn and prototype scores stay fp32.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch

from bigseer.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> torch.dtype:
    """The compute dtype of ``precision``; ``ConfigError`` for unknown names."""
    if precision not in DTYPES:
        raise ConfigError(f"precision={precision!r} is invalid: choose one of {', '.join(PRECISIONS)}")
    return DTYPES[precision]


def autocast(precision: str, device_type: str) -> ContextManager[Any]:
    """``torch.autocast`` for bf16/fp16 on ``device_type``; a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=DTYPES[precision])


def make_scaler(precision: str, device_type: str, sharded: bool = False, process_group: Any = None,
                init_scale: float = 2.0 ** 16, growth_interval: int = 1000) -> Any:
    """A dynamic loss scaler for fp16 (None otherwise). Defaults follow SEER's DeepSpeed settings
    (initial scale 2^16, window 1000)."""
    if precision != "fp16":
        return None
    if sharded:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
        return ShardedGradScaler(device=device_type, init_scale=init_scale, growth_interval=growth_interval,
                                 process_group=process_group)
    return torch.amp.GradScaler(device_type, init_scale=init_scale, growth_interval=growth_interval)
