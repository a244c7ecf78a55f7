"""The SwAV pretraining loop, backend-agnostic: data -> SwAVModel -> backend step -> checkpoint -> export.

Everything backend-specific (DDP / FSDP2 / DeepSpeed / FairScale, precision, SyncBN, activation
checkpointing, optimizer sharding) is behind :func:`bigseer.parallel.setup`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bigseer.config import PretrainConfig, resolve_backend, resolve_precision, validate
from bigseer.distributed import get_rank, get_world_size, init_distributed
from bigseer.errors import CheckpointError
from bigseer.train_log import TrainLogger, peak_memory_mb, setup_logging
from bigseer.health import CollapseError
from bigseer.watchdog import Heartbeat, explain_timeout, is_collective_timeout

# the health signals logged every logged step (bigseer.ssl.stats): in the progress line, metrics.jsonl, TB
HEALTH_KEYS = ("loss_ratio", "log_k", "pred_entropy", "code_entropy", "prototypes_used", "embed_std",
               "embed_std_ratio")

log = logging.getLogger("bigseer")


@dataclass
class PretrainResult:
    """What a finished run produced (paths are None on ranks other than 0 where they are rank-0 files)."""

    output_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    checkpoint: Path | None = None
    export_path: Path | None = None
    curves: Path | None = None
    skipped: dict[str, int] = field(default_factory=dict)


def _decode_device(name: str) -> torch.device | None:
    """The stream's decode device for ``--decode_device`` (None: the CPU path in loader workers)."""
    if name == "cuda":
        return torch.device("cuda", torch.cuda.current_device())  # this rank's GPU (set by init_distributed)
    return torch.device("cpu") if name == "cpu-tensor" else None


def build_swav_model(cfg: PretrainConfig, group: Any = None, device: Any = None) -> torch.nn.Module:
    """RegNetY trunk + SwAV head as configured (plain single-device module)."""
    from bigseer.models import build_regnet
    from bigseer.ssl import SwAVHead, SwAVModel

    trunk = build_regnet(cfg.model, device=device, zero_init_last=cfg.zero_init_last)
    head = SwAVHead(trunk.num_features, list(cfg.head_dims), cfg.embed_dim, cfg.num_prototypes,
                    shard_prototypes=cfg.shard_prototypes, queue_length=cfg.queue_length,
                    queue_crops=len(cfg.crops_for_assign), group=group)
    model = SwAVModel(trunk, head, temperature=cfg.temperature, epsilon=cfg.epsilon,
                      sinkhorn_iters=cfg.sinkhorn_iters, crops_for_assign=tuple(cfg.crops_for_assign),
                      freeze_prototypes_iters=cfg.freeze_prototypes_iters, group=group)
    if device is None or torch.device(device).type != "meta":
        model.init_weights(seed=cfg.seed)  # a function of (seed, name, row): the meta/FSDP path gets the same
    return model


def peak_lr(cfg: PretrainConfig, world_size: int) -> float:
    """SEER's linear scaling rule: ``base_lr * global_batch / 256``."""
    return cfg.base_lr * cfg.batch_size * world_size / 256


class LRSchedule:
    """The run's LR driver: SEER's warmup + half-cosine (a function of the step), or the paper's
    fixed-LR-halve-on-plateau schedule (stateful, fed the loss after every step)."""

    def __init__(self, cfg: PretrainConfig, world_size: int) -> None:
        from bigseer.optim.schedules import PlateauHalving, WarmupCosine

        peak = peak_lr(cfg, world_size)
        self.cosine: WarmupCosine | None = None
        self.plateau: PlateauHalving | None = None
        if cfg.schedule == "cosine":
            start = cfg.start_lr if cfg.start_lr is not None else peak / 64
            self.cosine = WarmupCosine(start, peak, cfg.warmup_steps, cfg.max_steps, peak * cfg.final_lr_ratio)
        else:
            self.plateau = PlateauHalving(lr=peak, patience=cfg.plateau_patience)

    def lr_at(self, step: int) -> float:
        return self.cosine(step) if self.cosine is not None else self.plateau.lr  # type: ignore[union-attr]

    def observe(self, loss: float) -> None:
        if self.plateau is not None:
            self.plateau.update(loss)

    def state_dict(self) -> dict[str, Any]:
        return self.plateau.state_dict() if self.plateau is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.plateau is not None:
            self.plateau.load_state_dict(state)


def _meta(cfg: PretrainConfig, backend: str) -> dict[str, Any]:
    from dataclasses import asdict

    from bigseer.models import resolve_params

    head = {"in_dim": None, "hidden_dims": list(cfg.head_dims), "embed_dim": cfg.embed_dim,
            "num_prototypes": cfg.num_prototypes, "shard_prototypes": cfg.shard_prototypes}
    return {"backend": backend, "model": asdict(resolve_params(cfg.model)), "model_name": cfg.model,
            "head": head, "config": cfg.to_dict()}


def apply_data_recipe(cfg: PretrainConfig) -> tuple[PretrainConfig, float | None]:
    """``cfg`` with ``cfg.recipe`` applied (``auto``: chosen from the data's image sizes and count,
    :mod:`bigseer.recipe`) to every setting the user did not choose; returns it and the data's median side.
    What the user chose: ``cfg.extra["explicit"]`` (the CLI records flags and config-file keys), else every
    field that differs from its default."""
    if cfg.recipe == "none":
        return cfg, None
    from dataclasses import fields as dc_fields

    from bigseer.recipe import apply_recipe, probe_data, recipe_for

    probe = probe_data(cfg.data) if cfg.recipe == "auto" else None
    recipe = recipe_for(cfg.recipe, data=cfg.data, probe=probe)
    explicit = cfg.extra.get("explicit")
    if explicit is None:
        default = PretrainConfig()
        explicit = [f.name for f in dc_fields(cfg) if getattr(cfg, f.name) != getattr(default, f.name)]
    chosen = [k for k in recipe.overrides if k not in explicit]
    log.info("%s%s", recipe.description, f" (kept your {', '.join(sorted(set(recipe.overrides) - set(chosen)))})"
             if set(recipe.overrides) - set(chosen) else "")
    return apply_recipe(cfg, recipe, explicit), (probe.median_side if probe is not None else None)


def _find_resume(cfg: PretrainConfig) -> Path | None:
    """The checkpoint ``cfg.resume`` asks for (None: start fresh); ``latest`` without one is an error."""
    from bigseer.checkpoint import find_latest

    mode = "latest" if cfg.resume is True else ("no" if cfg.resume is False else cfg.resume)
    if mode in ("no", None):
        return None
    found = find_latest(cfg.output_dir)
    if found is None and mode == "latest":
        raise CheckpointError(f"--resume: no checkpoint under {cfg.output_dir} (use --resume auto to start fresh "
                              "when there is none)")
    if found is None:
        log.info("--resume auto: no checkpoint under %s; starting from step 0", cfg.output_dir)
    return found


def _read_trainer(step_dir: Path) -> dict[str, Any]:
    try:
        return torch.load(step_dir / "trainer.pt", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{step_dir}: cannot read trainer state: {str(exc).splitlines()[0]}") from None


def pretrain(cfg: PretrainConfig) -> PretrainResult:
    """Run (or resume, on any number of ranks and any backend) SwAV pretraining; collective across ranks."""
    from bigseer import parallel
    from bigseer.checkpoint import CheckpointWriter, load_checkpoint, read_meta
    from bigseer.checkpoint.queue import load_queue_state, queue_pieces, queue_state
    from bigseer.data import AugmentConfig, MultiCropStream
    from bigseer.resume import plan_resume

    init_distributed(timeout_s=cfg.collective_timeout_s if isinstance(cfg.collective_timeout_s, int) else 1800)
    rank, world = get_rank(), get_world_size()
    setup_logging(rank)
    if cfg.shard_cache:
        import os

        os.environ["BIGSEER_SHARD_CACHE"] = cfg.shard_cache  # inherited by DataLoader workers
    cfg, median_side = apply_data_recipe(cfg)
    resume_dir = _find_resume(cfg)
    resumed_trainer: dict[str, Any] = {}
    if resume_dir is not None:
        saved_meta = read_meta(resume_dir)
        resumed_trainer = _read_trainer(resume_dir)
        cfg = plan_resume(cfg, saved_meta, resumed_trainer, world, str(resume_dir))
    cfg = validate(cfg, world)  # finalized; raises ConfigError before any work starts
    backend = resolve_backend(cfg, world)
    precision = resolve_precision(cfg)
    out = Path(cfg.output_dir)
    global_batch = cfg.batch_size * world
    if rank == 0:
        from bigseer.config_files import dump_config

        out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, out / "config.yaml")  # `--config OUTPUT_DIR/config.yaml` runs it again

    torch.manual_seed(cfg.seed)
    if backend == "fsdp":  # built on meta; parallel.setup shards it, then each rank allocates its shards only
        with torch.device("meta"):
            model = build_swav_model(cfg, device="meta")
    else:
        model = build_swav_model(cfg)
    schedule = LRSchedule(cfg, world)
    from bigseer.optim import LARS

    par = parallel.setup(
        model, backend="ddp" if backend == "none" else backend, precision=precision,
        syncbn_group_size=world if cfg.syncbn_group_size == -1 else (cfg.syncbn_group_size or None),
        checkpointing=cfg.checkpointing, ds_config=cfg.ds_config, exclude_bn_bias=cfg.lars_exclude_bn_bias,
        native_checkpoint=cfg.deepspeed_native, init_seed=cfg.seed,
        channels_last=parallel.speedup_switch(cfg.channels_last, cuda_default=True),
        compile=parallel.speedup_switch(cfg.compile, cuda_default=False),
        optimizer_factory=lambda groups: LARS(groups, lr=schedule.lr_at(0), momentum=cfg.momentum,
                                              weight_decay=cfg.weight_decay, trust_coefficient=cfg.lars_trust,
                                              zero_flat=True),  # exact per-tensor ratios on DeepSpeed's flat groups
    )
    swav = par.unwrapped
    proto_ids = {id(p) for p in swav.head.prototype_parameters()}
    proto_names = [n for n, p in swav.named_parameters() if id(p) in proto_ids]
    writer = CheckpointWriter(out, cfg.keep_last, async_save=cfg.async_checkpoint)

    def pieces(with_queue: bool = True) -> list[Any]:
        return par.state_pieces() + (queue_pieces(swav.head, cfg.batch_size, rank, world) if with_queue else [])

    start_step, samples, lanes = 0, 0, global_batch
    if resume_dir is not None:
        saved_queue = int(saved_meta.get("config", {}).get("queue_length", 0) or 0)
        same_queue = saved_queue > 0 and int(resumed_trainer.get("global_batch", -1)) == global_batch
        trainer_state, _, missing = load_checkpoint(resume_dir, pieces(with_queue=same_queue), group=writer.group)
        par.after_load()
        start_step, samples = int(trainer_state["step"]), int(trainer_state["samples"])
        lanes = int(trainer_state["lanes"])
        schedule.load_state_dict(trainer_state["schedule"])
        par.load_scaler_state(trainer_state.get("scaler"))
        if same_queue:
            load_queue_state(swav.head, trainer_state.get("queue"), cfg.batch_size)
        log.info("resumed from %s at step %d (%d samples seen; written by %s ranks)%s", resume_dir, start_step,
                 samples, trainer_state.get("world_size", "?"),
                 f"; no optimizer state for {len(missing)} tensors (a checkpoint from before the first step)"
                 if missing else "")

    augment = AugmentConfig(flip_p=cfg.flip_p, jitter_strength=cfg.jitter_strength, grayscale_p=cfg.grayscale_p,
                            blur_p=cfg.blur_p, ratio=(float(cfg.crop_ratio[0]), float(cfg.crop_ratio[1])))
    stream = MultiCropStream(cfg.data, cfg.crops, cfg.batch_size, rank=rank, world_size=world, seed=cfg.seed,
                             num_workers=cfg.num_workers, start_position=samples, lanes=lanes, augment=augment,
                             device=_decode_device(cfg.decode_device))
    catalog = {"samples": len(stream.catalog), "shards": int(len(stream.catalog.shard_counts()))}
    if resumed_trainer.get("catalog") not in (None, catalog):
        raise CheckpointError(f"cannot resume {resume_dir}: it read a data source of {resumed_trainer['catalog']} "
                              f"but --data {cfg.data} has {catalog} (the sample order would not continue)")
    if lanes != global_batch:
        log.info("global batch %d differs from the run's first (%d lanes): the same samples, but ranks now share "
                 "shards", global_batch, lanes)
    log.info("bigseer pretrain: %s, backend %s, %d rank(s), precision %s, global batch %d, data %s",
             cfg.model, backend, world, getattr(par, "precision", precision), global_batch, stream.describe())
    from bigseer.health import CollapseDetector

    detector = CollapseDetector.for_config(cfg.to_dict(), median_side=median_side, world_size=world,
                                           patience=max(1, math.ceil(cfg.collapse_patience / cfg.log_every)))
    if resumed_trainer.get("health"):
        detector.load_state_dict(resumed_trainer["health"])
    logger = TrainLogger(str(out), cfg.max_steps, start_step, rank, cfg.log_every)
    result = PretrainResult(output_dir=out, steps=start_step)
    meta = _meta(cfg, backend)

    def save(step: int) -> Path:
        state = {"step": step, "samples": samples, "lanes": lanes,
                 "global_batch": global_batch, "world_size": world, "schedule": schedule.state_dict(),
                 "scaler": par.scaler_state(), "queue": queue_state(swav.head, cfg.batch_size), "catalog": catalog,
                 "health": detector.state_dict()}
        par.sync_bn_stats()
        return writer.save(step, pieces(), state, meta, native=par.write_native)

    it = iter(stream)
    step = start_step
    heartbeat = Heartbeat()
    from bigseer.parallel.precision import DTYPES
    from bigseer.perf import FlopMeter, measured_peak_flops

    device = next((p.device for p in swav.parameters() if p.device.type != "meta"), torch.device("cpu"))
    meter = FlopMeter(measured_peak_flops(device, DTYPES.get(getattr(par, "precision", precision), torch.float32)))
    pending_skips: dict[str, int] = {}
    try:
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            batch = next(it)
            lr = schedule.lr_at(step)
            par.set_lr(lr)
            if cfg.freeze_prototypes_iters and step in (start_step, cfg.freeze_prototypes_iters):
                # SwAV: prototypes get no updates for the first iterations (works under every backend)
                par.set_frozen(proto_names, step < cfg.freeze_prototypes_iters)
            with (meter.count() if meter.step_flops is None else contextlib.nullcontext()):
                loss = par.forward(batch.crops)
                par.backward(loss)
            stepped = par.step()
            par.run_on_full_params(swav.normalize_prototypes)
            par.zero_grad()
            step += 1
            samples += global_batch
            for reason, n in batch.skipped.items():
                pending_skips[reason] = pending_skips.get(reason, 0) + n
            heartbeat.beat(step)
            if step % cfg.log_every == 0 or step == cfg.max_steps or schedule.plateau is not None:
                # the only host sync of a step: loss, memory and skip counts of all ranks, on logged steps
                loss_value, peak_mem, skipped = _step_stats(loss.detach(), pending_skips)
                pending_skips = {}
                if not math.isfinite(loss_value):  # the mean over ranks: every rank stops together, no hang
                    raise FloatingPointError(f"loss is {loss_value} at step {step}; lower the lr or use fp32/bf16 "
                                             f"(the last checkpoint is intact; --resume continues from it)")
                logger.add_skipped(skipped)
                schedule.observe(loss_value)
                result.losses.append(loss_value)
                health = swav.last_stats.as_dict() if swav.last_stats is not None else {}
                warning = detector.update(step, health) if health else None  # CollapseError with "stop"
                if warning:
                    log.warning("%s", warning)
                dt = time.perf_counter() - t0
                extra = {"samples": _all_samples(batch.samples)} if cfg.log_samples else {}
                extra["health"] = {k: health[k] for k in HEALTH_KEYS if k in health}
                logger.step(step, {**extra, "loss": loss_value, "lr": lr, "loss_scale": par.loss_scale,
                                   "stepped": bool(stepped), "img_per_s": global_batch / dt,
                                   "peak_mem_mb": max(peak_mem), "peak_mem_mb_per_rank": peak_mem,
                                   "checkpoint_stall_s": writer.last_stall_s, **meter.metrics(dt)})
                writer.last_stall_s = 0.0
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
                save(step)
        result.checkpoint = save(step)
        writer.wait()
        log.info("final checkpoint %s (training stalled %.2f s for it)", result.checkpoint, writer.last_stall_s)
    except CollapseError as exc:
        writer.wait()
        if rank == 0:
            from bigseer.checkpoint.directory import point_latest_at

            kept = point_latest_at(out / "checkpoints", exc.last_healthy_step)
            log.error("%s; latest checkpoint kept: %s", exc, kept or "none from before the collapse")
        raise
    except Exception as exc:
        if is_collective_timeout(exc):
            err = explain_timeout(exc, heartbeat, step, cfg.collective_timeout_s)
            log.error("%s", err)
            raise err from exc
        raise
    finally:
        writer.close()
        result.curves = logger.close()
        result.skipped = dict(logger.skipped_total)
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    result.steps = step
    if cfg.export:
        result.export_path = _export(result.checkpoint, out)
    return result


def _step_stats(loss: torch.Tensor, skipped: dict[str, int]) -> tuple[float, list[float], dict[str, int]]:
    """One all-gather per step: the loss averaged over ranks, each rank's peak memory (MiB) and the
    skipped-image counts summed over ranks."""
    from bigseer.data import SKIP_REASONS
    from bigseer.distributed import all_gather_cat

    local = torch.tensor([float(loss), peak_memory_mb(), *(float(skipped.get(r, 0)) for r in SKIP_REASONS)],
                         dtype=torch.float64)
    rows = all_gather_cat(local.to(loss.device if loss.device.type != "meta" else "cpu")[None]).cpu()
    totals = rows[:, 2:].sum(0)
    return (float(rows[:, 0].mean()), rows[:, 1].tolist(),
            {r: int(n) for r, n in zip(SKIP_REASONS, totals.tolist()) if n})


def _all_samples(samples: torch.Tensor | None) -> list[int]:
    """The sample ids of this step on all ranks, sorted (one all-gather)."""
    from bigseer.distributed import all_gather_cat

    if samples is None:
        return []
    return sorted(all_gather_cat(samples.to(torch.int64)).tolist())


def _export(checkpoint: Path | None, out: Path) -> Path | None:
    """Rank 0 writes the timm-layout trunk as ``OUTPUT_DIR/export/model.safetensors``."""
    if checkpoint is None:
        return None
    if get_rank() == 0:
        from bigseer.export import export_checkpoint

        export_dir = out / "export"
        export_checkpoint(str(checkpoint), str(export_dir), layout="timm")
        path = export_dir / "model.safetensors"
    else:
        path = None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return path


__all__ = ["PretrainConfig", "PretrainResult", "pretrain", "build_swav_model", "peak_lr", "LRSchedule"]
