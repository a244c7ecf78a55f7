"""DeepSpeed ZeRO 0/1/2/3 from a JSON config (see ``ds_configs/``), imported lazily.

Precision: the ``precision`` argument overrides the config's fp16/bf16/torch_autocast blocks. ``fp16``
uses DeepSpeed's own fp16 with SEER's dynamic loss scaling on CUDA; on CPU (DeepSpeed refuses fp16 on
CPUs without fp16 kernels, and where mkldnn has them its fp16 cast breaks CPU BatchNorm) one warning
line is emitted and the run falls back to bf16 through ``torch_autocast``. ``bf16`` always runs as fp32 parameters +
``torch_autocast`` bf16, so
BatchNorm stays fp32 (DeepSpeed's own bf16 casts BN params but not its buffers and fails).

LARS under ZeRO stages 1-3: DeepSpeed flattens each parameter group into one fp32 partition per rank
(DeepSpeed issues 490, 153), so LARS gets one tensor per group (``bigseer.parallel.zero_param_groups``)
and all-reduces each partition's sums of squares: exact per-tensor trust ratios (see
``bigseer.optim.lars``). ``LARS(..., zero_flat=True)`` keeps DeepSpeed's flat groups instead and gets the
tensor boundaries of each flat partition (``zero_pieces.flat_segments``): the same trust ratios with one
all-reduce and one DeepSpeed group step per flat group (``benchmarks/results/zero_cost.md``). The gradient
DeepSpeed hands the optimizer is the rank average, already unscaled and clipped; weight decay is applied by
LARS only. ``_bigseer_sharded`` parameters are refused (DeepSpeed would average and re-partition them).

ZeRO-3 without DeepSpeed fp16 (fp32 parameters, bf16 via autocast): DeepSpeed 0.19.8 means to use the fp32
parameter partition as its own fp32 master (``stage3.py`` ``_create_fp32_partitions``: "we don't need
another copy of the weights"), but it compares ``tensor.device`` with the device *name*
(``torch.device("cpu") == "cpu"`` is False, as is ``"cuda:0"``), so it clones a second copy;
:func:`_share_fp32_master` makes the master share the partition's storage as intended.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from typing import Any, Callable

import torch
from torch import nn

from bigseer.distributed import get_world_size, is_distributed
from bigseer.errors import ConfigError
from bigseer.parallel.base import Parallel, call_on_model, sharded_params
from bigseer.parallel.ds_json import load_ds_config

SEER_FP16 = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
             "hysteresis": 2, "min_loss_scale": 1}


def zero_stage(ds_config: dict[str, Any]) -> int:
    stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"zero_optimization.stage={stage!r} is invalid: must be 0, 1, 2 or 3")
    return stage


def fp16_supported() -> bool:
    """Whether DeepSpeed's accelerator supports fp16 (False on CPU)."""
    from deepspeed.accelerator import get_accelerator

    return bool(get_accelerator().is_fp16_supported())


def resolve_precision(ds_config: dict[str, Any], precision: str,
                      device_type: str = "cpu") -> tuple[dict[str, Any], str]:
    """Config with precision blocks set for ``precision``; returns (config, effective precision).

    fp16 needs a CUDA device whose DeepSpeed accelerator supports it: DeepSpeed refuses fp16 on CPUs
    without fp16 kernels, and where mkldnn has them its fp16 module cast still breaks CPU BatchNorm
    ("expected scalar type Half but found Float"); either way one warning, then bf16 autocast."""
    cfg = copy.deepcopy(ds_config)
    fp16_block = {**SEER_FP16, **cfg.get("fp16", {}), "enabled": True}
    for key in ("fp16", "bf16", "torch_autocast"):
        cfg.pop(key, None)
    effective = precision
    if precision == "fp16" and (device_type != "cuda" or not fp16_supported()):
        warnings.warn(f"bigseer: DeepSpeed fp16 is not supported on this {device_type} device; falling back to "
                      "bf16 via torch_autocast (fp32 parameters, BN fp32)", RuntimeWarning, stacklevel=3)
        effective = "bf16"
    if effective == "fp16":
        cfg["fp16"] = fp16_block
    elif effective == "bf16":
        cfg["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    cfg.setdefault("train_micro_batch_size_per_gpu", 1)
    cfg.setdefault("gradient_accumulation_steps", 1)
    cfg.setdefault("zero_allow_untested_optimizer", True)  # torch optimizers (SGD, ...) are fine
    return cfg, effective


def wants_zero_groups(optimizer: Any, stage: int) -> bool:
    """Whether ``optimizer`` needs one tensor per param group under ZeRO ``stage`` (LARS, stage >= 1)."""
    from bigseer.optim.lars import LARS

    return stage >= 1 and isinstance(optimizer, LARS) and not getattr(optimizer, "zero_flat", False)


def _flat_lars(optimizer: Any, stage: int) -> bool:
    """LARS that keeps DeepSpeed's flat groups and takes per-tensor boundaries (``zero_flat``)."""
    from bigseer.optim.lars import LARS

    return stage >= 1 and isinstance(optimizer, LARS) and bool(getattr(optimizer, "zero_flat", False))


def _share_fp32_master(zero_optimizer: Any) -> None:
    """ZeRO-3: let each fp32 master sub-group share the storage of its fp32 parameter partition, the
    alias DeepSpeed intends but misses (module doc). Only where both are the same dtype, shape and device
    and nothing is offloaded or swapped; the tensor objects (optimizer param / state keys) stay the same."""
    lows = getattr(zero_optimizer, "fp16_partitioned_groups_flat", None)
    highs = getattr(zero_optimizer, "fp32_partitioned_groups_flat", None)
    if not lows or not highs or getattr(zero_optimizer, "offload_optimizer", False) or \
            getattr(zero_optimizer, "swap_optimizer", False) or getattr(zero_optimizer, "offload_param", False):
        return
    for low, high in zip(lows, highs):
        if (low is not None and high is not low and high.dtype == low.dtype and high.shape == low.shape
                and high.device == low.device and high.data_ptr() != low.data_ptr()):
            high.data = low.data


def check_optimizer(optimizer: Any, stage: int) -> None:
    """LARS under ZeRO >= 1 must hold one ``zero_partitioned`` tensor per group (else its trust ratios
    would be those of a flat partition of several tensors)."""
    if not wants_zero_groups(optimizer, stage):
        return
    for i, g in enumerate(optimizer.param_groups):
        ps = g["params"]
        if len(ps) != 1 or not g.get("zero_partitioned") or g.get("zero_numel") != ps[0].numel():
            raise ConfigError(f"LARS under DeepSpeed ZeRO stage {stage}: param group {i} holds {len(ps)} tensors "
                              f"(zero_partitioned={g.get('zero_partitioned', False)}); ZeRO flattens each group, so "
                              "LARS needs the one-tensor groups bigseer.parallel.setup passes to optimizer_factory")


def _to_half(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.half() if obj.is_floating_point() else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_half(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_half(v) for k, v in obj.items()}
    return obj


class DeepSpeedParallel(Parallel):
    backend = "deepspeed"

    def __init__(self, model: nn.Module, engine: Any, precision: str, device_type: str, syncbn: bool,
                 stage: int) -> None:
        super().__init__(model, engine, engine.optimizer, precision, device_type, syncbn, None, None,
                         autocast_precision="fp32")  # DeepSpeed applies its own autocast
        self.engine = engine
        self.stage = stage
        self.native_checkpoint = False
        self._hooks: dict[int, Any] = {}
        self.own_group = False  # setup started the process group (one process, no launcher)
        self.env_set: list[str] = []  # launcher variables setup set for it
        self._closed = False

    def close(self) -> None:
        """Destroy the engine (its optimizer's buffers and hooks) and, when setup made the process group
        itself, DeepSpeed's communication backend, the group and the variables it set: the process is left
        as it was before setup, so a later run (or test) in it starts from scratch."""
        for handle in self._hooks.values():
            handle.remove()
        self._hooks = {}
        if not self._closed:
            self.engine.destroy()
            self._closed = True
        super().close()
        if self.own_group:
            import deepspeed.comm as ds_comm
            import deepspeed.comm.comm as ds_state
            import torch.distributed as dist

            if dist.is_initialized():
                ds_comm.destroy_process_group()
            ds_state.cdb = None  # the next init_distributed builds a new backend on a new group
            for name in self.env_set:
                os.environ.pop(name, None)
            self.own_group, self.env_set = False, []

    def set_frozen(self, names: Any, frozen: bool) -> None:
        """DeepSpeed moves gradients into its own buffers during backward, so frozen parameters get a
        gradient hook that zeroes their gradient before it reaches them (with weight decay 0 in their group
        they then stay unchanged; a momentum buffer from before the freeze still moves them)."""
        for p in self._params_named(list(names)):
            handle = self._hooks.pop(id(p), None)
            if handle is not None:
                handle.remove()
            if frozen:
                self._hooks[id(p)] = p.register_hook(torch.zeros_like)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the engine; under DeepSpeed fp16 (params in fp16) floating inputs are cast to fp16."""
        if self.precision == "fp16":
            args, kwargs = _to_half(args), _to_half(kwargs)
        return self.engine(*args, **kwargs)

    __call__ = forward

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def backward_micro(self, loss: torch.Tensor, index: int, count: int) -> None:
        """DeepSpeed's own accumulation (its ``gradient_accumulation_steps`` is ``count``, set by ``setup``): the
        engine scales the loss by 1/count, and its step applies only at the boundary (the last micro-batch)."""
        if count != self.engine.gradient_accumulation_steps():
            raise ConfigError(f"DeepSpeed was set up for {self.engine.gradient_accumulation_steps()} micro-batches per "
                              f"step, not {count}: pass accumulate={count} to bigseer.parallel.setup")
        self.engine.backward(loss)
        if index < count - 1:
            self.engine.step()  # not a boundary: counts the micro-batch, applies nothing

    def step(self) -> bool:
        self.engine.step()
        return bool(self.engine.was_step_applied())

    def zero_grad(self) -> None:
        self.engine.zero_grad()

    @property
    def loss_scale(self) -> float | None:
        if self.precision != "fp16":
            return None
        scale = getattr(self.engine.optimizer, "cur_scale", None)
        return float(scale) if scale is not None else None

    def run_on_full_params(self, fn: Callable[[nn.Module], Any]) -> Any:
        """Gather (ZeRO-3) and run ``fn`` on every rank; then refresh DeepSpeed's fp32 master partitions
        from the modified weights, so the change survives the next step."""
        import deepspeed

        params = list(self.unwrapped.parameters())
        ctx = (deepspeed.zero.GatheredParameters(params, modifier_rank=0) if self.stage == 3
               else contextlib.nullcontext())
        with torch.no_grad(), ctx:
            out = call_on_model(fn, self.unwrapped)
        refresh = getattr(self.engine.optimizer, "refresh_fp32_params", None)
        if refresh is not None:
            refresh()
        return out

    def full_state_dict(self) -> dict[str, Any]:
        self.sync_bn_stats()
        if self.stage == 3:
            sd = self.engine._zero3_consolidated_16bit_state_dict()
            return {k: v.detach().cpu().clone() for k, v in (sd or {}).items()}
        return {k: v.detach().cpu().clone() for k, v in self.unwrapped.state_dict().items()}

    def state_pieces(self) -> list[Any]:
        """ZeRO >= 1: the fp32 master partitions and their optimizer state, by parameter
        (:mod:`bigseer.parallel.zero_pieces`); stage 0: the module's own parameters."""
        from bigseer.parallel.zero_pieces import zero3_pieces, zero12_pieces

        if self.stage == 0:
            return super().state_pieces()
        return (zero3_pieces if self.stage == 3 else zero12_pieces)(self.engine.optimizer, self.unwrapped)

    def after_load(self) -> None:
        from bigseer.parallel.zero_pieces import refresh_after_load

        if self.stage:
            refresh_after_load(self.engine.optimizer, self.unwrapped, self.stage)

    def scaler_state(self) -> dict[str, Any] | None:
        scaler = getattr(self.engine.optimizer, "loss_scaler", None) if self.precision == "fp16" else None
        return {"scale": float(scaler.cur_scale), "growth_tracker": 0} if scaler is not None else None

    def load_scaler_state(self, state: dict[str, Any] | None) -> None:
        scaler = getattr(self.engine.optimizer, "loss_scaler", None) if self.precision == "fp16" else None
        if scaler is not None and state:
            scaler.cur_scale = float(state["scale"])

    def write_native(self, directory: str) -> None:
        """DeepSpeed's own checkpoint in ``directory/deepspeed`` with its ``latest`` file, so DeepSpeed's
        scripts (``zero_to_fp32.py`` copied beside it) run as documented. Collective, synchronous; only with
        ``setup(..., native_checkpoint=True)``."""
        if self.native_checkpoint:
            self.engine.save_checkpoint(os.path.join(directory, "deepspeed"), tag="state", save_latest=True)


def setup_deepspeed(model: nn.Module, *, precision: str, device_type: str, syncbn: bool,
                    optimizer_factory: Callable[[Any], Any], param_groups: Callable[[nn.Module], Any],
                    ds_config: dict[str, Any] | str | None, grad_clip: float | None,
                    accumulate: int = 1) -> DeepSpeedParallel:
    if ds_config is None:
        raise ConfigError("backend deepspeed needs ds_config (a dict, a JSON path or a name in ds_configs/)")
    cfg = load_ds_config(ds_config)
    stage = zero_stage(cfg)
    if sharded_params(model):
        raise ConfigError("backend deepspeed cannot hold _bigseer_sharded parameters (sharded prototypes); "
                          "use replicated prototypes or backend fsdp/ddp")
    try:
        import deepspeed
    except ImportError as exc:
        raise ConfigError(f"backend deepspeed needs the deepspeed package ({exc})") from None
    cfg, effective = resolve_precision(cfg, precision, device_type)
    if grad_clip:
        cfg["gradient_clipping"] = grad_clip
    # bigseer feeds the micro-batches: DeepSpeed gets the run's accumulation, its batch total follows from it
    cfg["gradient_accumulation_steps"] = accumulate
    cfg.pop("train_batch_size", None)
    optimizer = optimizer_factory(param_groups(model))
    check_optimizer(optimizer, stage)
    if _flat_lars(optimizer, stage) and cfg.get("zero_optimization", {}).get("mics_shard_size", -1) > 0:
        raise ConfigError("LARS under DeepSpeed MiCS (zero_optimization.mics_shard_size) is refused: its "
                          "partitions span shard groups, not all ranks, so trust ratios would be wrong")
    own_group = not is_distributed()  # one process without a launcher: DeepSpeed needs a group of 1
    env_set = _single_process_env() if own_group else []
    deepspeed.init_distributed(dist_backend="nccl" if device_type == "cuda" else "gloo")
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=cfg)
    dp_group = getattr(engine.optimizer, "dp_process_group", None)
    flat = _flat_lars(optimizer, stage)
    if (wants_zero_groups(optimizer, stage) or flat) and dp_group is not None and \
            get_world_size(dp_group) != get_world_size():
        # LARS sums the partitions' squares over the default group: ZeRO must partition over all ranks
        raise ConfigError(f"LARS under ZeRO needs the data-parallel group to span all {get_world_size()} ranks "
                          f"(DeepSpeed's has {get_world_size(dp_group)})")
    if stage == 3 and effective != "fp16":
        _share_fp32_master(engine.optimizer)
    if flat:
        from bigseer.parallel.zero_pieces import flat_segments

        for partition, segments, n_tensors in flat_segments(engine.optimizer, stage):
            optimizer.set_zero_segments(partition, segments, n_tensors)
    par = DeepSpeedParallel(model, engine, effective, device_type, syncbn, stage)
    par.own_group, par.env_set = own_group, env_set
    return par


def _single_process_env() -> list[str]:
    """Set the launcher variables DeepSpeed reads for a one-process group (a free port, never a fixed one:
    DeepSpeed's CPU all-reduce names its shared memory after it); returns the names it set."""
    from bigseer.distributed import free_port

    wanted = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": str(free_port())}
    missing = [k for k in wanted if k not in os.environ]
    os.environ.update({k: wanted[k] for k in missing})
    return missing
