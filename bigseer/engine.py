"""The SwAV pretraining loop, backend-agnostic: resolve -> build -> restore -> for each step: step, log, maybe
save -> export.

The run's settings are decided once (:func:`bigseer.run.resolve_run`); its parts are built by the ``build_*``
helpers of :mod:`bigseer.trainer`; everything backend-specific (DDP / FSDP2 / DeepSpeed / FairScale, precision,
SyncBN, activation checkpointing, optimizer sharding) is behind :func:`bigseer.parallel.setup`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from bigseer.config import PretrainConfig
from bigseer.distributed import get_rank, get_world_size, init_distributed
from bigseer.errors import CheckpointError
from bigseer.health import CollapseError
from bigseer.optim.schedules import LRSchedule
from bigseer.run import ResolvedRun, resolve_run
from bigseer.train_log import TrainLogger, all_samples, setup_logging, step_stats
from bigseer.trainer import (
    Freezer,
    Progress,
    QueuePart,
    ScalerPart,
    TrainState,
    accumulated_swav_step,
    build_schedule,
    build_stream,
    build_swav_model,
    checkpoint_meta,
    export_trunk,
    lars_factory,
    peak_lr,
    warm_start,
)
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


@dataclass
class Job:
    """A built run: the wrapped model and the parts the loop drives."""

    run: ResolvedRun
    par: Any  # bigseer.parallel.Parallel
    stream: Any  # bigseer.data.MultiCropStream
    writer: Any  # bigseer.checkpoint.CheckpointWriter
    state: TrainState
    meta: dict[str, Any]

    @property
    def progress(self) -> Progress:
        return self.state.progress

    @property
    def schedule(self) -> LRSchedule:
        return self.state.parts["schedule"]  # type: ignore[return-value]

    @property
    def detector(self) -> Any:  # bigseer.health.CollapseDetector
        return self.state.parts["health"]

    def pieces(self, with_queue: bool = True) -> list[Any]:
        """This rank's checkpoint tensors: model and optimizer through the wrapper, plus the SwAV queue."""
        from bigseer.checkpoint.queue import queue_pieces

        queue = queue_pieces(self.par.unwrapped.head, self.run.cfg.batch_size, get_rank(), self.run.world_size,
                             self.run.micro)
        return self.par.state_pieces() + (queue if with_queue else [])

    def save(self) -> Path:
        self.par.sync_bn_stats()
        return self.writer.save(self.progress.step, self.pieces(), self.state.state_dict(), self.meta,
                                native=self.par.write_native)


def build_parallel(run: ResolvedRun, schedule: LRSchedule) -> Any:
    """The SwAV model built (on meta for FSDP: each rank then allocates its shards only; on this rank's GPU
    otherwise when there is one) and wrapped, with channels_last / compile chosen by measurement for ``auto``."""
    from bigseer import parallel
    from bigseer.parallel.autotune import choose_speedups, regnet_factory

    cfg = run.cfg
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    speedups = choose_speedups(regnet_factory(cfg.model, device, cfg.zero_init_last), cfg.crops, cfg.batch_size,
                               run.precision, device, channels_last=cfg.channels_last, compile=cfg.compile,
                               model=cfg.model, cache_dir=cfg.output_dir, sharded=run.backend == "fsdp",
                               checkpointing=cfg.checkpointing)
    torch.manual_seed(cfg.seed)
    if run.backend == "fsdp":
        with torch.device("meta"):
            model = build_swav_model(cfg, device="meta")
    else:
        model = build_swav_model(cfg).to(device)
    return parallel.setup(
        model, backend="ddp" if run.backend == "none" else run.backend, precision=run.precision,
        syncbn_group_size=run.world_size if cfg.syncbn_group_size == -1 else (cfg.syncbn_group_size or None),
        checkpointing=cfg.checkpointing, ds_config=cfg.ds_config, exclude_bn_bias=cfg.lars_exclude_bn_bias,
        native_checkpoint=cfg.deepspeed_native, init_seed=cfg.seed, channels_last=speedups.channels_last,
        compile=speedups.compile, optimizer_factory=lars_factory(cfg, schedule.lr_at(0)), accumulate=run.micro)


def build_job(run: ResolvedRun) -> Job:
    """Every part of the run, restored from its resume point when it has one."""
    from bigseer.checkpoint import CheckpointWriter
    from bigseer.health import CollapseDetector

    cfg, world = run.cfg, run.world_size
    schedule = build_schedule(cfg, world)
    par = build_parallel(run, schedule)
    writer = CheckpointWriter(cfg.output_dir, cfg.keep_last, async_save=cfg.async_checkpoint)
    detector = CollapseDetector.for_config(cfg.to_dict(), median_side=run.median_side, world_size=run.lanes,
                                           patience=max(1, math.ceil(cfg.collapse_patience / cfg.log_every)))
    saved = run.resume.trainer if run.resume is not None else {}
    saved_queue = int(run.resume.meta.get("config", {}).get("queue_length", 0) or 0) if run.resume else 0
    same_queue = saved_queue > 0 and int(saved.get("global_batch", -1)) == run.global_batch
    state = TrainState(Progress(run.global_batch, world), schedule=schedule, scaler=ScalerPart(par),
                       queue=QueuePart(par.unwrapped.head, cfg.batch_size * run.micro, same_queue), health=detector)
    job = Job(run, par, None, writer, state, checkpoint_meta(run.cfg, run.backend))
    try:
        _restore_and_stream(job, saved, same_queue)
    except BaseException:
        writer.close()
        par.close()
        raise
    return job


def _restore_and_stream(job: Job, saved: dict[str, Any], same_queue: bool) -> None:
    """Restore the job from its resume point (when it has one), then open its data stream at its position."""
    from bigseer.checkpoint import load_checkpoint

    run, par = job.run, job.par
    cfg, world, rank = run.cfg, run.world_size, get_rank()
    if run.resume is None and cfg.init_from:
        warm_start(cfg, par)
    if run.resume is not None:
        _, _, missing = load_checkpoint(run.resume.directory, job.pieces(with_queue=same_queue),
                                        group=job.writer.group, known=(run.resume.meta, saved))
        par.after_load()
        job.state.load_state_dict(saved)
        log.info("resumed from %s at step %d (%d samples seen; written by %s ranks)%s", run.resume.directory,
                 job.progress.step, job.progress.samples, saved.get("world_size", "?"),
                 f"; no optimizer state for {len(missing)} tensors (a checkpoint from before the first step)"
                 if missing else "")
    job.stream = build_stream(cfg, rank, world, job.progress.samples, job.progress.lanes)
    job.progress.catalog = {"samples": len(job.stream.catalog), "shards": int(len(job.stream.catalog.shard_counts()))}
    if saved.get("catalog") not in (None, job.progress.catalog):
        raise CheckpointError(f"cannot resume {run.resume.directory if run.resume else ''}: it read a data source "
                              f"of {saved['catalog']} but --data {cfg.data} has {job.progress.catalog} (the sample "
                              "order would not continue)")
    if job.progress.lanes != run.global_batch:
        log.info("global batch %d differs from the run's first (%d lanes): the same samples, but ranks now share "
                 "shards", run.global_batch, job.progress.lanes)
    log.info("bigseer pretrain: %s, backend %s, %d rank(s), precision %s, global batch %d, data %s", cfg.model,
             run.backend, world, getattr(par, "precision", run.precision), run.global_batch, job.stream.describe())


def pretrain(cfg: PretrainConfig, explicit: Iterable[str] | None = None) -> PretrainResult:
    """Run (or resume, on any number of ranks and any backend) SwAV pretraining; collective across ranks.
    ``explicit``: the settings the user chose (the CLI passes its flags and config-file keys), which the
    recipe leaves alone; None: every setting that differs from its default."""
    init_distributed(timeout_s=cfg.collective_timeout_s if isinstance(cfg.collective_timeout_s, int) else 1800)
    rank, world = get_rank(), get_world_size()
    setup_logging(rank)
    run = resolve_run(cfg, world, explicit)
    out = Path(run.cfg.output_dir)
    if rank == 0:
        from bigseer.config_files import dump_config

        out.mkdir(parents=True, exist_ok=True)
        dump_config(run.cfg, out / "config.yaml")  # `--config OUTPUT_DIR/config.yaml` runs it again
    job = build_job(run)
    result = PretrainResult(output_dir=out, steps=job.progress.step)
    try:
        _train(job, result)
    finally:
        job.writer.close()
        job.par.close()  # process groups and engines this run made end with it (DeepSpeed's group of one too)
        close = getattr(job.stream, "close", None)
        if close is not None:
            close()
    result.steps = job.progress.step
    if run.cfg.export:
        result.export_path = export_trunk(result.checkpoint, out)
    return result


def _train(job: Job, result: PretrainResult) -> None:
    """The loop: for each step, the SwAV step, then (on logged steps) stats, health and the log, then maybe a
    checkpoint; the final checkpoint at the end. A collapse keeps ``latest`` on the last healthy checkpoint."""
    from bigseer.parallel.precision import DTYPES
    from bigseer.perf import FlopMeter, measured_peak_flops

    cfg, par, progress = job.run.cfg, job.par, job.progress
    swav, freezer = par.unwrapped, Freezer(cfg, par)
    logger = TrainLogger(str(cfg.output_dir), cfg.max_steps, progress.step, get_rank(), cfg.log_every)
    device = next((p.device for p in swav.parameters() if p.device.type != "meta"), torch.device("cpu"))
    meter = FlopMeter(measured_peak_flops(device, DTYPES.get(getattr(par, "precision", job.run.precision),
                                                             torch.float32)))
    it, heartbeat, start_step = iter(job.stream), Heartbeat(), progress.step
    pending_skips: dict[str, int] = {}
    try:
        while progress.step < cfg.max_steps:
            t0 = time.perf_counter()
            micros = [next(it) for _ in range(job.run.micro)]  # the micro-batches of the step
            lr = job.schedule.lr_at(progress.step)
            freezer.update(progress.step, progress.step == start_step)  # prototypes / trunk frozen at first
            loss, stepped = accumulated_swav_step(par, [b.crops for b in micros], lr,
                                                  meter.count() if meter.step_flops is None else None)
            progress.advance()
            for reason, n in ((r, n) for b in micros for r, n in b.skipped.items()):
                pending_skips[reason] = pending_skips.get(reason, 0) + n
            heartbeat.beat(progress.step)
            if progress.step % cfg.log_every == 0 or progress.step == cfg.max_steps or job.schedule.plateau is not None:
                _log_step(job, logger, meter, loss, lr, stepped, micros, pending_skips, time.perf_counter() - t0,
                          result)
                pending_skips = {}
            if cfg.checkpoint_every and progress.step % cfg.checkpoint_every == 0 and progress.step < cfg.max_steps:
                job.save()
        result.checkpoint = job.save()
        job.writer.wait()
        log.info("final checkpoint %s (training stalled %.2f s for it)", result.checkpoint, job.writer.last_stall_s)
    except CollapseError as exc:
        job.writer.wait()
        if get_rank() == 0:
            from bigseer.checkpoint.directory import point_latest_at

            kept = point_latest_at(Path(cfg.output_dir) / "checkpoints", exc.last_healthy_step)
            log.error("%s; latest checkpoint kept: %s", exc, kept or "none from before the collapse")
        raise
    except Exception as exc:
        if is_collective_timeout(exc):
            err = explain_timeout(exc, heartbeat, progress.step, cfg.collective_timeout_s)
            log.error("%s", err)
            raise err from exc
        raise
    finally:
        result.curves = logger.close()
        result.skipped = dict(logger.skipped_total)


def _log_step(job: Job, logger: TrainLogger, meter: Any, loss: torch.Tensor, lr: float, stepped: bool,
              micros: list[Any], skips: dict[str, int], dt: float, result: PretrainResult) -> None:
    """The only host sync of a step, on logged steps: loss, memory and skip counts of all ranks; then the
    schedule's and the health detector's update and one log record."""
    cfg, step = job.run.cfg, job.progress.step
    loss_value, peak_mem, skipped = step_stats(loss.detach(), skips)
    if not math.isfinite(loss_value):  # the mean over ranks: every rank stops together, no hang
        raise FloatingPointError(f"loss is {loss_value} at step {step}; lower the lr or use fp32/bf16 "
                                 f"(the last checkpoint is intact; --resume continues from it)")
    logger.add_skipped(skipped)
    job.schedule.observe(loss_value)
    result.losses.append(loss_value)
    swav = job.par.unwrapped
    health = swav.last_stats.as_dict() if swav.last_stats is not None else {}
    warning = job.detector.update(step, health) if health else None  # CollapseError with "stop"
    if warning:
        log.warning("%s", warning)
    ids = [b.samples for b in micros if b.samples is not None]
    extra: dict[str, Any] = {"samples": all_samples(torch.cat(ids) if ids else None)} if cfg.log_samples else {}
    extra["health"] = {k: health[k] for k in HEALTH_KEYS if k in health}
    logger.step(step, {**extra, "loss": loss_value, "lr": lr, "loss_scale": job.par.loss_scale,
                       "stepped": bool(stepped), "img_per_s": job.run.global_batch / dt,
                       "peak_mem_mb": max(peak_mem), "peak_mem_mb_per_rank": peak_mem,
                       "checkpoint_stall_s": job.writer.last_stall_s, **meter.metrics(dt)})
    job.writer.last_stall_s = 0.0


__all__ = ["PretrainConfig", "PretrainResult", "pretrain", "build_swav_model", "peak_lr", "LRSchedule"]
