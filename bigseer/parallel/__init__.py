"""Data-parallel backends applied from outside the model; state-dict keys stay the model's own.

Entry point::

    p = bigseer.parallel.setup(model, backend="fsdp", precision="bf16", syncbn_group_size=64,
                               checkpointing="all", optimizer_factory=lambda groups: LARS(groups, lr=0.3),
                               ds_config=None, exclude_bn_bias=False, grad_clip=None,
                               large_unit_threshold=int(1e8), device_type=None)
    loss = p.forward(crops)        # p.module(crops) without autocast; p.forward adds it where needed
    p.backward(loss)
    stepped = p.step()             # False: skipped on inf/nan gradients (fp16), scale reduced
    p.zero_grad(); p.set_lr(lr); p.loss_scale          # float, or None without loss scaling
    p.run_on_full_params(lambda m: m.normalize_prototypes())   # every rank, every backend
    sd = p.full_state_dict()       # collective; rank 0 gets the full state, model's own keys, CPU
    p.state_pieces(); p.after_load()     # checkpoint pieces of logical tensors (bigseer.checkpoint)
    p.unwrapped                    # the model object passed in (on_after_backward, ...)

``setup(model, *, backend, precision="fp32", syncbn_group_size=None, checkpointing="none",
optimizer_factory, ds_config=None, exclude_bn_bias=False, grad_clip=None, large_unit_threshold=1e8,
device_type=None) -> Parallel``

- ``backend``: ``ddp`` | ``fsdp`` (FSDP2, primary) | ``deepspeed`` (ZeRO from ``ds_config``) | ``fairscale``
  (CUDA only).
- ``precision``: ``fp32`` | ``bf16`` | ``fp16`` (see ``bigseer.parallel.precision``; DeepSpeed fp16 on a
  CPU warns once and falls back to bf16 via torch_autocast; ``p.precision`` is the effective one).
- ``syncbn_group_size``: None/1 = plain BN (running stats averaged across ranks before every checkpoint
  or export); k = ``GroupSyncBatchNorm`` over consecutive groups of k ranks (must divide the world).
- ``checkpointing``: ``"none"`` | ``"all"`` | per-stage list (``bigseer.parallel.checkpointing``).
- ``optimizer_factory(param_groups) -> Optimizer``: called with the param groups of the (wrapped)
  model: ``[{"params": [...]}]``, or with ``exclude_bn_bias`` a second group
  ``{"params": 1-d tensors, "lars_exclude": True, "weight_decay": 0.0}``. Under DeepSpeed ZeRO >= 1 a
  factory that returns ``LARS`` is called again with ``zero_param_groups`` of those (one tensor per
  group, ``zero_partitioned=True``), which makes LARS exact there; it must keep one tensor per group.
- Checkpoints: ``p.state_pieces()`` lists where this rank's share of every logical tensor lives (model
  parameters / buffers ``model.<fqn>``, optimizer state ``optim.<fqn>.<key>``): DDP tensors whole (one owner
  rank writes each), FSDP2 row blocks, ZeRO-1/2/3 fp32-master slices, sharded prototypes row blocks.
  ``bigseer.checkpoint`` writes and reads them in one world-size- and backend-free format;
  ``p.after_load()`` refreshes backend copies (DeepSpeed's bit16 / gathered parameters);
  ``p.scaler_state()`` / ``p.load_scaler_state()`` move the loss scale between backends;
  ``p.write_native(dir)`` adds DeepSpeed's own checkpoint when ``native_checkpoint=True``.
- ``p.sync_bn_stats()`` averages BN running stats across ranks (no-op with SyncBN); the engine calls it
  before every checkpoint; ``full_state_dict`` calls it.
- One process without a process group: ddp/fsdp run the plain model (autocast for bf16/fp16).

fsdp also accepts a model built on ``device="meta"`` and materialises only each rank's shards with the
model's own ``init_weights(seed=init_seed, rows_of=...)`` (``bigseer.parallel.meta_init``): the same values
as an eager build with that seed. Other backends refuse a meta model.

All validation happens before any collective or wrapping, and fails with one ``ConfigError`` line.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from bigseer.distributed import get_world_size
from bigseer.errors import ConfigError
from bigseer.parallel.base import Parallel, sharded_params, trunk_of
from bigseer.parallel.bn_stats import average_bn_stats
from bigseer.parallel.checkpointing import apply_checkpointing, select_blocks
from bigseer.parallel.precision import PRECISIONS, check_precision
from bigseer.parallel.syncbn import GroupSyncBatchNorm, convert_syncbn, make_syncbn_groups

BACKENDS = ("ddp", "fsdp", "deepspeed", "fairscale")

__all__ = ["BACKENDS", "PRECISIONS", "Parallel", "setup", "check_setup", "GroupSyncBatchNorm", "convert_syncbn",
           "make_syncbn_groups", "average_bn_stats", "apply_checkpointing", "param_groups_for",
           "zero_param_groups"]


SWITCHES = ("auto", "on", "off")  # --channels_last / --compile, in pretraining and evaluation


def speedup_switch(value: str, cuda_default: bool, cuda: bool | None = None) -> bool:
    """``on`` / ``off``, or ``auto``: ``cuda_default`` when running on CUDA (``cuda``; default: CUDA is
    available), off elsewhere."""
    if value not in SWITCHES:
        raise ConfigError(f"switch value {value!r} is invalid: choose one of {', '.join(SWITCHES)}")
    on_cuda = torch.cuda.is_available() if cuda is None else cuda
    return value == "on" or (value == "auto" and cuda_default and on_cuda)


def apply_speedups(model: nn.Module, trunk: nn.Module, *, channels_last: bool, compile: bool, sharded: bool) -> None:
    """channels_last: the trunk's inputs (and, unless its parameters get sharded, its conv weights) in NHWC,
    how convnets reach tensor-core speed; compile: every trunk block compiled in place (``Module.compile``:
    state-dict keys unchanged), before any wrapping, as torchtitan orders it. The head is not compiled
    (its collectives would break the graph). Blocks compile with static shapes (one graph per resolution)."""
    if channels_last:
        trunk.memory_format = torch.channels_last
        if not sharded and not any(p.is_meta for p in trunk.parameters()):
            trunk.to(memory_format=torch.channels_last)
    if compile:
        from torch import _dynamo

        blocks = trunk.blocks()
        # all blocks share Bottleneck.forward, so dynamo counts one graph per (block shape, crop resolution)
        # against one code object: allow them all (4 per block covers 2-4 resolutions)
        for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                     "accumulated_cache_size_limit"):
            if hasattr(_dynamo.config, name):
                setattr(_dynamo.config, name, max(getattr(_dynamo.config, name), 4 * len(blocks) + 8))
        for block in blocks:  # static shapes: dynamic ones fail in inductor on the SE means
            block.compile(dynamic=False)


def check_setup(backend: str, *, device_type: str, world_size: int, syncbn_group_size: int | None = None,
                native_checkpoint: bool = False, ds_config: Any = None) -> None:
    """One ConfigError line when :func:`setup` could not run these settings here, before any work (the config
    validation calls it too): the backend is known and available (fairscale is CUDA-only, deepspeed needs its
    package and a JSON config), native checkpoints are DeepSpeed's, SyncBN groups divide the world."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is invalid: choose one of {', '.join(BACKENDS)}")
    if backend == "fairscale":
        from bigseer.parallel.fairscale import check_fairscale

        check_fairscale(device_type)
    elif backend == "deepspeed":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError("backend deepspeed needs the deepspeed package (pip install deepspeed)")
        if ds_config is None:
            raise ConfigError("backend deepspeed needs a DeepSpeed JSON config (--deepspeed_config "
                              "ds_configs/zero2.json; in Python: ds_config, a dict, a JSON path or a shipped name)")
    if native_checkpoint and backend != "deepspeed":
        raise ConfigError(f"deepspeed_native writes DeepSpeed's own checkpoint: it needs backend deepspeed, not "
                          f"{backend!r}")
    if syncbn_group_size not in (None, 1) and (not isinstance(syncbn_group_size, int) or syncbn_group_size < 1
                                                or world_size % syncbn_group_size):
        raise ConfigError(f"syncbn_group_size={syncbn_group_size!r} is invalid: must be a positive integer "
                          f"dividing the world size {world_size} (in a run config: 0 = off, -1 = whole world)")


def param_groups_for(model: nn.Module, exclude_bn_bias: bool = False) -> list[dict[str, Any]]:
    """Param groups handed to ``optimizer_factory`` (trainable params; 1-d ones apart when excluded)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not exclude_bn_bias:
        return [{"params": params}]
    groups: list[dict[str, Any]] = [{"params": [p for p in params if p.ndim > 1]}]
    rest = [p for p in params if p.ndim <= 1]
    if rest:
        groups.append({"params": rest, "lars_exclude": True, "weight_decay": 0.0})
    return groups


def zero_param_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One group per tensor (keeping each group's options), marked ``zero_partitioned=True`` and
    ``zero_numel=numel``: what LARS gets under DeepSpeed ZeRO >= 1, so that each flat ZeRO partition is a
    slice of one tensor and its trust ratio is that tensor's (see ``bigseer.optim.lars``)."""
    return [{**{k: v for k, v in g.items() if k != "params"}, "params": [p], "zero_partitioned": True,
             "zero_numel": p.numel()} for g in groups for p in g["params"]]


def setup(model: nn.Module, *, backend: str, precision: str = "fp32", syncbn_group_size: int | None = None,
          checkpointing: Any = "none", optimizer_factory: Callable[[Any], Any],
          ds_config: dict[str, Any] | str | None = None, exclude_bn_bias: bool = False,
          grad_clip: float | None = None, large_unit_threshold: int = int(1e8),
          device_type: str | None = None, native_checkpoint: bool = False,
          init_seed: int | None = None, channels_last: bool = False, compile: bool = False,
          accumulate: int = 1) -> Parallel:
    """Wrap ``model`` for data-parallel training with ``backend`` and build its optimizer (see module doc).
    ``accumulate``: micro-batches per optimizer step (``Parallel.backward_micro``; DeepSpeed is told)."""
    if device_type is None:
        first = next(model.parameters(), None)
        device_type = first.device.type if first is not None else "cpu"
    world = get_world_size()
    check_setup(backend, device_type=device_type, world_size=world, syncbn_group_size=syncbn_group_size,
                native_checkpoint=native_checkpoint, ds_config=ds_config)
    check_precision(precision)
    from bigseer.parallel.meta_init import is_meta_model

    if backend != "fsdp" and is_meta_model(model):
        raise ConfigError(f"backend {backend} needs a materialised model: build on device='meta' only for backend fsdp")
    per_tensor = False
    if backend == "deepspeed":
        from bigseer.parallel.deepspeed import check_optimizer, load_ds_config, wants_zero_groups, zero_stage

        ds_config = load_ds_config(ds_config)
        # LARS under ZeRO gets one tensor per param group (exact per-tensor trust ratios); decided and
        # validated here with throw-away optimizers (no state), before any collective
        stage = zero_stage(ds_config)
        per_tensor = wants_zero_groups(optimizer_factory(param_groups_for(model, exclude_bn_bias)), stage)
        if per_tensor and ds_config.get("zero_optimization", {}).get("mics_shard_size", -1) > 0:
            raise ConfigError("LARS under DeepSpeed MiCS (zero_optimization.mics_shard_size) is refused: its "
                              "partitions span shard groups, not all ranks, so trust ratios would be wrong")
        if per_tensor:
            check_optimizer(optimizer_factory(zero_param_groups(param_groups_for(model, exclude_bn_bias))), stage)
    trunk = trunk_of(model)
    select_blocks(trunk, checkpointing)  # validates the spec
    if sharded_params(model) and backend in ("deepspeed", "fairscale"):
        raise ConfigError(f"backend {backend} cannot hold _bigseer_sharded parameters (sharded prototypes); "
                          "use backend fsdp or ddp")
    syncbn = bool(syncbn_group_size and syncbn_group_size > 1 and world > 1)
    syncbn_group = make_syncbn_groups(syncbn_group_size) if syncbn else None
    if syncbn:
        convert_syncbn(model, syncbn_group)
    apply_checkpointing(trunk, checkpointing)
    apply_speedups(model, trunk, channels_last=channels_last, compile=compile, sharded=backend == "fsdp")

    def groups(m: nn.Module) -> list[dict[str, Any]]:
        built = param_groups_for(m, exclude_bn_bias)
        return zero_param_groups(built) if per_tensor else built

    common = dict(precision=precision, device_type=device_type, syncbn=syncbn,
                  optimizer_factory=optimizer_factory, param_groups=groups, grad_clip=grad_clip)
    par: Parallel
    if backend == "ddp":
        from bigseer.parallel.ddp import setup_ddp

        par = setup_ddp(model, **common)
    elif backend == "fsdp":
        from bigseer.parallel.fsdp import setup_fsdp

        par = setup_fsdp(model, large_unit_threshold=large_unit_threshold, init_seed=init_seed, **common)
    elif backend == "deepspeed":
        from bigseer.parallel.deepspeed import setup_deepspeed

        par = setup_deepspeed(model, ds_config=ds_config, accumulate=accumulate, **common)
        par.native_checkpoint = native_checkpoint
    else:
        from bigseer.parallel.fairscale import setup_fairscale

        par = setup_fairscale(model, **common)
    if syncbn_group is not None:
        par._owned_groups.append(syncbn_group)
    par.bn_synced_over_world = syncbn and syncbn_group_size == world
    return par
