"""The SwAV pretraining loop, backend-agnostic: data -> SwAVModel -> backend step -> checkpoint -> export.

Everything backend-specific (DDP / FSDP2 / DeepSpeed / FairScale, precision, SyncBN, activation
checkpointing, optimizer sharding) is behind :func:`bigseer.parallel.setup`.
"""

from __future__ import annotations

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


def build_swav_model(cfg: PretrainConfig, group: Any = None, device: Any = None) -> torch.nn.Module:
    """RegNetY trunk + SwAV head as configured (plain single-device module)."""
    from bigseer.models import build_regnet
    from bigseer.ssl import SwAVHead, SwAVModel

    trunk = build_regnet(cfg.model, device=device, zero_init_last=cfg.zero_init_last)
    head = SwAVHead(trunk.num_features, list(cfg.head_dims), cfg.embed_dim, cfg.num_prototypes,
                    shard_prototypes=cfg.shard_prototypes, queue_length=cfg.queue_length,
                    queue_crops=len(cfg.crops_for_assign), group=group)
    return SwAVModel(trunk, head, temperature=cfg.temperature, epsilon=cfg.epsilon,
                     sinkhorn_iters=cfg.sinkhorn_iters, crops_for_assign=tuple(cfg.crops_for_assign),
                     freeze_prototypes_iters=cfg.freeze_prototypes_iters, group=group)


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


def pretrain(cfg: PretrainConfig) -> PretrainResult:
    """Run (or resume) SwAV pretraining as configured; collective across all launched ranks."""
    from bigseer import checkpoint as ckpt
    from bigseer import parallel
    from bigseer.data import AugmentConfig, MultiCropStream

    init_distributed()
    rank, world = get_rank(), get_world_size()
    setup_logging(rank)
    cfg = validate(cfg, world)  # finalized; raises ConfigError before any work starts
    backend = resolve_backend(cfg, world)
    precision = resolve_precision(cfg)
    out = Path(cfg.output_dir)

    resume_dir = None
    if cfg.resume:
        resume_dir = ckpt.find_latest(out)
        if resume_dir is None:
            log.warning("--resume: no checkpoint under %s; starting from step 0", out)

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
        optimizer_factory=lambda groups: LARS(groups, lr=schedule.lr_at(0), momentum=cfg.momentum,
                                              weight_decay=cfg.weight_decay, trust_coefficient=cfg.lars_trust),
    )
    swav = par.unwrapped
    proto_ids = {id(p) for p in swav.head.prototype_parameters()}
    proto_names = [n for n, p in swav.named_parameters() if id(p) in proto_ids]

    start_step = 0
    if resume_dir is not None:
        def check(meta: dict[str, Any]) -> None:
            if meta.get("model_name") != cfg.model:
                raise CheckpointError(f"{resume_dir} is a {meta.get('model_name')} run; this run builds {cfg.model}")
        trainer_state = ckpt.load_checkpoint(resume_dir, par, check_meta=check)
        start_step = int(trainer_state["step"])
        schedule.load_state_dict(trainer_state["schedule"])
        log.info("resumed from %s at step %d", resume_dir, start_step)

    augment = AugmentConfig(flip_p=cfg.flip_p, jitter_strength=cfg.jitter_strength, grayscale_p=cfg.grayscale_p,
                            blur_p=cfg.blur_p, ratio=(float(cfg.crop_ratio[0]), float(cfg.crop_ratio[1])))
    stream = MultiCropStream(cfg.data, cfg.crops, cfg.batch_size, rank=rank, world_size=world, seed=cfg.seed,
                             num_workers=cfg.num_workers, start_position=start_step * cfg.batch_size * world,
                             augment=augment)
    log.info("bigseer pretrain: %s, backend %s, %d rank(s), precision %s, global batch %d, data %s",
             cfg.model, backend, world, getattr(par, "precision", precision), cfg.batch_size * world,
             stream.describe())
    logger = TrainLogger(str(out), cfg.max_steps, start_step, rank, cfg.log_every)
    result = PretrainResult(output_dir=out, steps=start_step)
    meta = _meta(cfg, backend)

    def save(step: int) -> Path:
        state = {"step": step, "schedule": schedule.state_dict()}
        return ckpt.save_checkpoint(out, step, par, state, meta, keep_last=cfg.keep_last)

    it = iter(stream)
    step = start_step
    try:
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            batch = next(it)
            lr = schedule.lr_at(step)
            par.set_lr(lr)
            if cfg.freeze_prototypes_iters and step in (start_step, cfg.freeze_prototypes_iters):
                # SwAV: prototypes get no updates for the first iterations (works under every backend)
                par.set_frozen(proto_names, step < cfg.freeze_prototypes_iters)
            loss = par.forward(batch.crops)
            par.backward(loss)
            stepped = par.step()
            par.run_on_full_params(swav.normalize_prototypes)
            par.zero_grad()
            step += 1
            loss_value, peak_mem, skipped = _step_stats(loss.detach(), batch.skipped)
            if not math.isfinite(loss_value):  # the mean over ranks: every rank stops together, no hang
                raise FloatingPointError(f"loss is {loss_value} at step {step}; lower the lr or use fp32/bf16 "
                                         f"(the last checkpoint is intact; --resume continues from it)")
            logger.add_skipped(skipped)
            schedule.observe(loss_value)
            result.losses.append(loss_value)
            dt = time.perf_counter() - t0
            logger.step(step, {"loss": loss_value, "lr": lr, "loss_scale": par.loss_scale,
                               "stepped": bool(stepped), "img_per_s": cfg.batch_size * world / dt,
                               "peak_mem_mb": max(peak_mem), "peak_mem_mb_per_rank": peak_mem})
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
                save(step)
        result.checkpoint = save(step)
    finally:
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
