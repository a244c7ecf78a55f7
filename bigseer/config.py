"""The pretraining run configuration and its up-front validation (fails before any work starts)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from bigseer.data.settings import AugmentSettings, DataSettings
from bigseer.errors import ConfigError
from bigseer.flags import doc  # each field's one description: --help and config.yaml comments
from bigseer.models.settings import ModelSettings
from bigseer.optim.settings import OptimSettings
from bigseer.parallel import BACKENDS as PARALLEL_BACKENDS
from bigseer.parallel.ds_json import ds_config_path, load_ds_config
from bigseer.parallel.precision import PRECISIONS as PARALLEL_PRECISIONS
from bigseer.parallel.settings import ParallelSettings
from bigseer.ssl.settings import SwAVSettings

BACKENDS = ("auto", "none", *PARALLEL_BACKENDS)  # auto: chosen from the launch; none: one process
RESUME = ("no", "latest", "auto")
PRECISIONS = ("auto", *PARALLEL_PRECISIONS)  # auto: the DeepSpeed JSON's, else fp32
SCHEDULES = ("cosine", "plateau")
DECODE_DEVICES = ("cpu", "cuda", "cpu-tensor")  # bigseer.data.render.SampleRenderer(device=...)
# a warm start's peak lr factor: 1/8 kept a converged trunk's probe within 1 point where 1/4 and 1 lost 2.5-5.7
# (benchmarks/results/continue.md)
INIT_LR_SCALE = 0.125


@dataclass
class RunSettings:
    """Section ``run`` of :class:`PretrainConfig`: where the run writes, how it checkpoints, logs and resumes
    (read by the engine, the checkpoint store and the health detector)."""

    recipe: str = doc("auto", 'auto: augmentation, crops, head and K chosen from the data (bigseer.recipe) | seer | '
                              'none')
    output_dir: str = doc("runs/demo", 'where checkpoints, metrics, curves, config.yaml and the export go')
    checkpoint_every: int = doc(0, '0: only at exit')
    keep_last: int = doc(2, 'committed checkpoints kept (older ones are deleted after each commit)')
    async_checkpoint: bool = doc(True, 'write checkpoints in the background (training stalls for the copy only)')
    resume: str = doc("no", 'continue from OUTPUT_DIR/checkpoints/latest: latest (fail without a checkpoint) | auto '
                            '(start fresh without one, for schedulers that restart jobs) | no', choices=RESUME,
                        const="latest")
    seed: int = doc(0, 'seed of the weights (a function of seed, name and row) and of the sample order')
    log_every: int = doc(1, 'steps between logged steps (the only host sync)')
    log_samples: bool = doc(False, "record every step's sample ids (all ranks) in metrics.jsonl: data audits, tests")
    on_collapse: str = doc("warn", 'warn | stop (keep the last good checkpoint, exit non-zero) | off')
    collapse_patience: int = doc(300, "steps at SwAV's trivial fixed point before the detector fires")
    export: bool = doc(True, 'export the trunk (timm layout safetensors) to OUTPUT_DIR/export at the end')
    extra: dict[str, Any] = field(default_factory=dict, metadata={"help": "free-form notes kept with the run's config"})


# config-file section -> the dataclass that owns its fields (each in its component's package)
CONFIG_SECTIONS: tuple[tuple[str, type], ...] = (
    ("model", ModelSettings), ("data", DataSettings), ("augment", AugmentSettings), ("swav", SwAVSettings),
    ("optim", OptimSettings), ("parallel", ParallelSettings), ("run", RunSettings))


@dataclass
class PretrainConfig(RunSettings, ParallelSettings, OptimSettings, SwAVSettings, AugmentSettings, DataSettings,
                     ModelSettings):
    """Everything a SwAV pretraining run needs: the fields of its sections (:data:`CONFIG_SECTIONS`, each
    owned by its component and described there once, :func:`bigseer.flags.doc`), flat (``cfg.batch_size``) as
    the flags and the engine use them. Defaults are the tiny CPU demo; the SEER values are in the descriptions
    and ``recipes/seer_rg256.yaml``."""

    def __post_init__(self) -> None:
        if isinstance(self.resume, bool):  # resume=True / False (bigseer 0.1) = latest / no
            self.resume = "latest" if self.resume else "no"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of all fields."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PretrainConfig":
        """Inverse of ``to_dict``; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}")
        d = dict(d)
        if isinstance(d.get("resume"), bool):  # bigseer 0.1 configs
            d["resume"] = "latest" if d["resume"] else "no"
        for key in ("head_dims", "crops_for_assign", "crop_ratio"):
            if key in d and d[key] is not None:
                d[key] = tuple(d[key])
        return cls(**d)


def finalize(cfg: PretrainConfig) -> PretrainConfig:
    """Fill the ``None`` defaults that depend on other fields (batch size from the DeepSpeed config,
    warmup from max_steps). Returns a new config; explicit values are kept as given."""
    from dataclasses import replace

    batch = cfg.batch_size
    if batch is None:
        micro = load_ds_config(cfg.ds_config).get("train_micro_batch_size_per_gpu") if cfg.ds_config else None
        batch = micro if isinstance(micro, int) else 32
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(8000, cfg.max_steps // 10)
    head_warmup = cfg.head_warmup_steps
    if head_warmup is None:
        head_warmup = warmup if cfg.init_from and not cfg.init_head else 0
    lr_scale = cfg.init_lr_scale if cfg.init_lr_scale is not None else (INIT_LR_SCALE if cfg.init_from else 1.0)
    return replace(cfg, batch_size=batch, warmup_steps=warmup, accumulate=accumulate_of(cfg),
                   head_warmup_steps=head_warmup, init_lr_scale=lr_scale)


def accumulate_of(cfg: PretrainConfig) -> int:
    """Micro-batches per step: ``--accumulate``, else the DeepSpeed JSON's ``gradient_accumulation_steps`` (the
    same thing: bigseer gives DeepSpeed its own value), else 1. A JSON and a flag that differ are refused."""
    gas = load_ds_config(cfg.ds_config).get("gradient_accumulation_steps", 1) if cfg.ds_config else 1
    if isinstance(gas, bool) or not isinstance(gas, int) or gas < 1:
        raise ConfigError(f"{cfg.ds_config}: gradient_accumulation_steps={gas!r} must be an integer >= 1")
    if cfg.accumulate is None:
        return gas
    if gas != 1 and gas != cfg.accumulate:
        raise ConfigError(f"{cfg.ds_config}: gradient_accumulation_steps={gas} contradicts --accumulate "
                          f"{cfg.accumulate}; set one of them (they mean the same: micro-batches per step)")
    return cfg.accumulate


def _require(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def validate(cfg: PretrainConfig, world_size: int = 1, ds_batch_superseded: bool = False) -> PretrainConfig:
    """:func:`validated` without the backend: the finalized config that was checked."""
    return validated(cfg, world_size, ds_batch_superseded)[0]


def validated(cfg: PretrainConfig, world_size: int = 1, ds_batch_superseded: bool = False
              ) -> tuple[PretrainConfig, str]:
    """Check every field that can be checked without touching data or devices. Raises ConfigError.
    Returns the finalized config (``None`` defaults filled by :func:`finalize`) that was checked and its
    backend (``auto`` resolved once, by :func:`resolve_backend`).
    ``ds_batch_superseded``: an elastic resume chose the per-rank batch, so a DeepSpeed JSON's batch fields
    (the old run's) are not held against it."""
    from bigseer.models import resolve_params

    if cfg.ds_config is not None:
        from dataclasses import replace

        cfg = replace(cfg, ds_config=ds_config_path(cfg.ds_config))  # one reader: a path or a shipped name
    cfg = finalize(cfg)
    assert cfg.batch_size is not None and cfg.warmup_steps is not None and cfg.accumulate is not None
    assert cfg.head_warmup_steps is not None and cfg.init_lr_scale is not None
    _require(0 < cfg.init_lr_scale <= 1, f"init_lr_scale={cfg.init_lr_scale} must be in (0, 1]")

    resolve_params(cfg.model)
    _require(cfg.backend in BACKENDS, f"unknown backend {cfg.backend!r}; choose one of {', '.join(BACKENDS)}")
    _require(cfg.precision in PRECISIONS, f"unknown precision {cfg.precision!r}; choose one of {', '.join(PRECISIONS)}")
    _require(cfg.schedule in SCHEDULES, f"unknown schedule {cfg.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    _require(cfg.decode_device in DECODE_DEVICES,
             f"decode_device={cfg.decode_device!r} is invalid; choose one of {', '.join(DECODE_DEVICES)}")
    _require(cfg.decode_device == "cpu" or cfg.num_workers == 0,
             f"decode_device={cfg.decode_device} decodes in the training process: set num_workers 0 (got "
             f"{cfg.num_workers}); its loader workers would each need their own CUDA context")
    import torch

    _require(cfg.decode_device != "cuda" or torch.cuda.is_available(),
             "decode_device=cuda needs CUDA, but torch.cuda.is_available() is False; use decode_device cpu")
    from bigseer.parallel import SWITCHES

    for name in ("channels_last", "compile"):
        _require(getattr(cfg, name) in SWITCHES, f"{name}={getattr(cfg, name)!r} must be auto, on or off")
    from bigseer.parallel.checkpointing import parse_checkpointing

    parse_checkpointing(cfg.checkpointing)  # the trunk's stage count is checked when the model exists
    _require(cfg.recipe in ("auto", "seer", "none"), f"recipe={cfg.recipe!r} is invalid; choose auto, seer or none")
    _require(cfg.on_collapse in ("warn", "stop", "off"), f"on_collapse={cfg.on_collapse!r} must be warn, stop or off")
    _require(cfg.collapse_patience > 0, f"collapse_patience={cfg.collapse_patience} must be > 0")
    _require(cfg.resume in RESUME, f"resume={cfg.resume!r} is invalid; choose one of {', '.join(RESUME)}")
    _require(cfg.collective_timeout_s > 0, f"collective_timeout_s={cfg.collective_timeout_s} must be > 0")
    _require(not cfg.queue_length or cfg.queue_length % cfg.batch_size == 0,
             f"queue_length={cfg.queue_length} must be a multiple of the per-rank batch {cfg.batch_size} (the queue "
             "holds whole steps, so it can be re-split when the run resumes on another number of ranks)")
    for name in ("batch_size", "accumulate", "max_steps", "embed_dim", "num_prototypes", "sinkhorn_iters", "keep_last",
                 "log_every"):
        _require(getattr(cfg, name) > 0, f"{name}={getattr(cfg, name)} must be > 0")
    for name in ("num_workers", "warmup_steps", "checkpoint_every", "freeze_prototypes_iters", "queue_length",
                 "head_warmup_steps"):
        _require(getattr(cfg, name) >= 0, f"{name}={getattr(cfg, name)} must be >= 0")
    _require(all(h > 0 for h in cfg.head_dims), f"head_dims={list(cfg.head_dims)} must all be > 0")
    from bigseer.data.multicrop import parse_crops

    n_crops = sum(g.count for g in parse_crops(cfg.crops))
    for name in ("flip_p", "grayscale_p", "blur_p"):
        _require(0 <= getattr(cfg, name) <= 1, f"{name}={getattr(cfg, name)} must be a probability in [0, 1]")
    _require(len(cfg.crop_ratio) == 2 and 0 < cfg.crop_ratio[0] <= cfg.crop_ratio[1],
             f"crop_ratio={list(cfg.crop_ratio)} must be two numbers 0 < min <= max")
    _require(cfg.jitter_strength >= 0, f"jitter_strength={cfg.jitter_strength} must be >= 0")
    _require(n_crops >= 2, f"crops={cfg.crops!r} gives {n_crops} crop: SwAV needs at least 2")
    _require(len(cfg.crops_for_assign) > 0 and all(0 <= i < n_crops for i in cfg.crops_for_assign),
             f"crops_for_assign={list(cfg.crops_for_assign)} must index the {n_crops} crops of {cfg.crops!r}")
    _require(cfg.base_lr > 0 and cfg.temperature > 0 and cfg.epsilon > 0,
             "base_lr, temperature and epsilon must be > 0")
    _require(cfg.warmup_steps < cfg.max_steps or cfg.warmup_steps == 0,
             f"warmup_steps={cfg.warmup_steps} must be < max_steps={cfg.max_steps}")
    _require(cfg.head_warmup_steps < cfg.max_steps or cfg.head_warmup_steps == 0,
             f"head_warmup_steps={cfg.head_warmup_steps} must be < max_steps={cfg.max_steps} (the trunk would never "
             "train)")
    # the --init_from weights are opened by bigseer.run.resolve_run, before any work (not when the run resumes)
    _require(not cfg.init_head or bool(cfg.init_from), "--init_head takes the head from --init_from: give --init_from")
    if cfg.shard_prototypes:
        _require(cfg.num_prototypes % world_size == 0,
                 f"num_prototypes={cfg.num_prototypes} must be divisible by the world size {world_size} "
                 "when shard_prototypes is on")
    _require(cfg.syncbn_group_size >= -1, f"syncbn_group_size={cfg.syncbn_group_size} must be 0 (off), -1 (whole "
             "world) or a group size")
    backend = resolve_backend(cfg, world_size)
    import torch

    from bigseer.parallel import check_setup

    check_setup("ddp" if backend == "none" else backend, device_type="cuda" if torch.cuda.is_available() else "cpu",
                world_size=world_size, native_checkpoint=cfg.deepspeed_native, ds_config=cfg.ds_config,
                syncbn_group_size={0: None, -1: world_size}.get(cfg.syncbn_group_size, cfg.syncbn_group_size))
    if cfg.ds_config is not None:
        _require(backend == "deepspeed",
                 f"a DeepSpeed config was given but backend is {backend!r}; use --backend deepspeed")
        check_ds_config(cfg, world_size, ds_batch_superseded)
    if cfg.data != "builtin" and "*" not in cfg.data and "{" not in cfg.data and "://" not in cfg.data \
            and "," not in cfg.data:
        _require(os.path.exists(cfg.data), f"data path {cfg.data!r} does not exist")
    return cfg, backend


def resolve_backend(cfg: PretrainConfig, world_size: int) -> str:
    """``auto`` -> deepspeed when a DeepSpeed config is given, ddp with >1 rank, else none."""
    if cfg.backend != "auto":
        return cfg.backend
    if cfg.ds_config is not None:
        return "deepspeed"
    return "ddp" if world_size > 1 else "none"


def check_ds_config(cfg: PretrainConfig, world_size: int, ds_batch_superseded: bool = False) -> None:
    """Reject DeepSpeed configs that contradict the run's flags (batch sizes, precision)."""
    ds = load_ds_config(cfg.ds_config or "")
    if ds_batch_superseded:  # an elastic resume sets the batch; the JSON's batch fields are the old run's
        ds = {k: v for k, v in ds.items() if k not in ("train_micro_batch_size_per_gpu", "train_batch_size")}
    micro = ds.get("train_micro_batch_size_per_gpu")
    if isinstance(micro, int) and micro != cfg.batch_size:
        raise ConfigError(f"{cfg.ds_config}: train_micro_batch_size_per_gpu={micro} contradicts "
                          f"--batch_size {cfg.batch_size}; remove it from the JSON or make them equal")
    total = ds.get("train_batch_size")
    acc = cfg.accumulate or 1
    if isinstance(total, int) and total != cfg.batch_size * world_size * acc:
        raise ConfigError(f"{cfg.ds_config}: train_batch_size={total} contradicts --batch_size {cfg.batch_size} "
                          f"x world size {world_size} x accumulate {acc}")
    ds_precision = ds_config_precision(ds)
    if cfg.precision != "auto" and cfg.precision != ds_precision:
        raise ConfigError(f"{cfg.ds_config} trains in {ds_precision} but --precision is {cfg.precision}; "
                          "drop --precision or edit the JSON")


def ds_config_precision(ds: dict[str, Any]) -> str:
    """The precision a DeepSpeed config asks for: fp16, bf16 or fp32."""
    if ds.get("fp16", {}).get("enabled"):
        return "fp16"
    if ds.get("bf16", {}).get("enabled") or ds.get("bfloat16", {}).get("enabled"):
        return "bf16"
    autocast = ds.get("torch_autocast", {})
    if autocast.get("enabled"):  # fp32 parameters + torch.autocast (how bigseer runs bf16 with fp32 BN)
        dtype = str(autocast.get("dtype", "bfloat16")).replace("torch.", "")
        return {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16"}.get(dtype, "bf16")
    return "fp32"


def resolve_precision(cfg: PretrainConfig) -> str:
    """``auto`` -> the DeepSpeed config's precision when one is given, else fp32."""
    if cfg.precision != "auto":
        return cfg.precision
    return ds_config_precision(load_ds_config(cfg.ds_config)) if cfg.ds_config else "fp32"
