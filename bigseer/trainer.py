"""The parts of a pretraining run, built from its resolved config, and the one SwAV training step.

``build_*`` helpers (one per part: model, schedule, optimizer factory) serve the engine and the benchmarks.
:func:`swav_step` is the one SwAV step (forward, backward, optimizer step, prototype renormalisation,
zero_grad); :func:`accumulated_swav_step` the same over N micro-batches with the maths of N times the ranks.
:class:`TrainState` holds the trainer's stateful parts, each owning ``state_dict()`` /
``load_state_dict()``, and saves them by name in a checkpoint's ``trainer.pt`` (as torchtitan's
``CheckpointManager(states=...)``); the tensors (model, optimizer, queue) go through the parallel wrapper's
checkpoint pieces.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Protocol

import torch

from bigseer.config import PretrainConfig
from bigseer.distributed import get_rank
from bigseer.optim.schedules import LRSchedule, linear_scaled_lr


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


def build_swav_model(cfg: PretrainConfig, group: Any = None, device: Any = None) -> torch.nn.Module:
    """RegNetY trunk + SwAV head as configured (plain single-device module; on ``device="meta"`` unmaterialised:
    its weights are a function of (seed, name, row), so every layout initialises them alike)."""
    from bigseer.models import build_regnet
    from bigseer.ssl import SwAVHead, SwAVModel

    trunk = build_regnet(cfg.model, device=device, zero_init_last=cfg.zero_init_last)
    head = SwAVHead(trunk.num_features, list(cfg.head_dims), cfg.embed_dim, cfg.num_prototypes,
                    shard_prototypes=cfg.shard_prototypes, queue_length=cfg.queue_length * (cfg.accumulate or 1),
                    queue_crops=len(cfg.crops_for_assign), group=group)
    model = SwAVModel(trunk, head, temperature=cfg.temperature, epsilon=cfg.epsilon,
                      sinkhorn_iters=cfg.sinkhorn_iters, crops_for_assign=tuple(cfg.crops_for_assign),
                      freeze_prototypes_iters=cfg.freeze_prototypes_iters, group=group)
    if device is None or torch.device(device).type != "meta":
        model.init_weights(seed=cfg.seed)
    return model


def build_stream(cfg: PretrainConfig, rank: int, world_size: int, position: int, lanes: int) -> Any:
    """This rank's multi-crop stream over ``cfg.data`` from sample ``position`` of the run's order; with
    ``decode_device`` cuda (or its CPU twin ``cpu-tensor``) decoding and crops run in the training process."""
    from bigseer.data import AugmentConfig, MultiCropStream

    device = None  # cpu: loader workers decode
    if cfg.decode_device == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
    elif cfg.decode_device == "cpu-tensor":
        device = torch.device("cpu")
    augment = AugmentConfig.of(cfg)  # the same field names
    return MultiCropStream(cfg.data, cfg.crops, cfg.batch_size, rank=rank, world_size=world_size, seed=cfg.seed,
                           num_workers=cfg.num_workers, start_position=position, lanes=lanes, augment=augment,
                           device=device, shard_cache=cfg.shard_cache, accumulate=cfg.accumulate or 1)


def checkpoint_meta(cfg: PretrainConfig, backend: str) -> dict[str, Any]:
    """What a checkpoint's ``meta.json`` says of the run: backend, model parameters, head and the config."""
    from dataclasses import asdict

    from bigseer.models import resolve_params

    head = {"in_dim": None, "hidden_dims": list(cfg.head_dims), "embed_dim": cfg.embed_dim,
            "num_prototypes": cfg.num_prototypes, "shard_prototypes": cfg.shard_prototypes}
    return {"backend": backend, "model": asdict(resolve_params(cfg.model)), "model_name": cfg.model,
            "head": head, "config": cfg.to_dict()}


def warm_start(cfg: PretrainConfig, par: Any) -> None:
    """Load ``--init_from`` (trunk, and the head with ``--init_head``) into the wrapped model, on every rank."""
    import logging

    from bigseer.warm_start import load_trunk_into, open_init_weights

    opened = open_init_weights(str(cfg.init_from), cfg.model)
    try:
        counts = load_trunk_into(par, opened, with_head=cfg.init_head)
    finally:
        opened.close()
    logging.getLogger("bigseer").info(
        "--init_from %s: %d trunk tensors%s loaded; %s; peak lr x %g (--init_lr_scale)", cfg.init_from,
        counts["trunk"], f" and {counts['head']} head tensors" if cfg.init_head else "",
        f"the trunk stays frozen for the first {cfg.head_warmup_steps} steps while the fresh SwAV head learns on it "
        "(--head_warmup_steps)" if cfg.head_warmup_steps else "every part trains from step 1", cfg.init_lr_scale)


class Freezer:
    """Which parameters the optimizer skips at a step: the prototypes for ``freeze_prototypes_iters`` steps (SwAV),
    the trunk for ``head_warmup_steps`` (a warm start's fresh head learns first). Works under every backend
    (``Parallel.set_frozen``). A frozen trunk keeps its BatchNorm statistics too (momentum 0: the batches still
    normalise with their own statistics, the running ones stay the source's until the trunk trains)."""

    def __init__(self, cfg: PretrainConfig, par: Any) -> None:
        from bigseer.parallel.bn_stats import bn_modules

        swav = par.unwrapped
        protos = {id(p) for p in swav.head.prototype_parameters()}
        self.par = par
        self.groups = [(int(cfg.freeze_prototypes_iters), [n for n, p in swav.named_parameters() if id(p) in protos]),
                       (int(cfg.head_warmup_steps or 0), [n for n, _ in swav.named_parameters()
                                                          if n.startswith("trunk.")])]
        self.trunk_bn = [(m, m.momentum) for m in bn_modules(swav.trunk)]

    def update(self, step: int, first: bool) -> None:
        """Call before each step (``first``: the first step of this process)."""
        for i, (until, names) in enumerate(self.groups):
            if until and (first or step == until):
                self.par.set_frozen(names, step < until)
                if i == 1:
                    for m, momentum in self.trunk_bn:
                        m.momentum = 0.0 if step < until else momentum


def export_trunk(checkpoint: Any, out: Any) -> Any:
    """Rank 0 writes the final checkpoint's timm-layout trunk as ``out/export/model.safetensors``; every rank
    waits for it; rank 0 gets its path (other ranks and a run without a checkpoint: None)."""
    from pathlib import Path

    if checkpoint is None:
        return None
    if get_rank() == 0:
        from bigseer.export import export_checkpoint

        export_checkpoint(str(checkpoint), str(Path(out) / "export"), layout="timm")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return Path(out) / "export" / "model.safetensors" if get_rank() == 0 else None


def peak_lr(cfg: PretrainConfig, world_size: int) -> float:
    """The run's peak LR: the linear scaling rule on the global batch (ranks x micro-batches x batch), x
    ``init_lr_scale`` for a warm start (``--init_from``)."""
    assert cfg.batch_size is not None
    scale = cfg.init_lr_scale if cfg.init_lr_scale is not None else 1.0
    return linear_scaled_lr(cfg.base_lr, cfg.batch_size * world_size * (cfg.accumulate or 1)) * scale


def build_schedule(cfg: PretrainConfig, world_size: int) -> LRSchedule:
    """The run's LR schedule (warmup + half-cosine, or halving on plateaus) at its peak LR."""
    assert cfg.warmup_steps is not None
    return LRSchedule(peak_lr(cfg, world_size), schedule=cfg.schedule, start_lr=cfg.start_lr,
                      warmup_steps=cfg.warmup_steps, total_steps=cfg.max_steps, final_lr_ratio=cfg.final_lr_ratio,
                      plateau_patience=cfg.plateau_patience)


def lars_factory(cfg: PretrainConfig, lr: float) -> Callable[[Any], Any]:
    """The optimizer factory ``bigseer.parallel.setup`` calls with the parameter groups it chose: LARS as SEER
    ran it, with exact per-tensor trust ratios on DeepSpeed's flat groups (``zero_flat``)."""
    from bigseer.optim import LARS

    return lambda groups: LARS(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               trust_coefficient=cfg.lars_trust, zero_flat=True)


def swav_step(par: Any, crops: list[torch.Tensor], lr: float | None = None,
              measure: ContextManager[Any] | None = None) -> tuple[torch.Tensor, bool]:
    """One SwAV step on a wrapped model (``bigseer.parallel.Parallel``): set ``lr``, forward and backward
    (inside ``measure``, e.g. a FLOP counter), optimizer step, prototype rows back on the unit sphere,
    zero_grad. Returns the (rank-local, undetached) loss and whether the step was applied (False when the loss
    scaler skipped it)."""
    if lr is not None:
        par.set_lr(lr)
    with measure if measure is not None else contextlib.nullcontext():
        loss = par.forward(crops)
        par.backward(loss)
    stepped = par.step()
    par.run_on_full_params(par.unwrapped.normalize_prototypes)
    par.zero_grad()
    return loss, bool(stepped)


def accumulated_swav_step(par: Any, micros: list[list[torch.Tensor]], lr: float | None = None,
                          measure: ContextManager[Any] | None = None) -> tuple[torch.Tensor, bool]:
    """One SwAV step over ``len(micros)`` micro-batches, as that many times the ranks would take it: a no-grad
    scoring pass gives every micro-batch's assignment scores, Sinkhorn runs once over all of them
    (:mod:`bigseer.ssl.accumulate`), then each micro-batch does forward and backward with its codes fixed
    (gradients accumulate to the mean; data-parallel reduction with the last). BatchNorm sees each micro-batch
    alone, its running statistics end on the micro-batches' mean; the queue takes all micro-batches' rows;
    one optimizer step (skipped as a whole when any micro-batch overflowed on any rank). Returns the mean of the
    micro-batch losses (rank-local) and whether the step was applied."""
    from bigseer.parallel.bn_stats import add_bn_state, bn_state, load_bn_state, scaled_bn_state
    from bigseer.ssl.accumulate import effective_codes, queue_rows

    if len(micros) == 1:
        return swav_step(par, micros[0], lr, measure)
    swav = par.unwrapped
    if lr is not None:
        par.set_lr(lr)
    with measure if measure is not None else contextlib.nullcontext():
        start = bn_state(swav)
        scored = []
        with torch.no_grad(), swav.scoring_pass():
            for crops in micros:
                scored.append(par.forward(crops))
                load_bn_state(swav, start)
        codes = effective_codes(scored, swav.epsilon, swav.sinkhorn_iters, swav.group)
        total, losses = None, []
        for m, crops in enumerate(micros):
            with swav.head.codes_given(codes[m]):
                loss = par.forward(crops)
            par.backward_micro(loss, m, len(micros))
            losses.append(loss.detach())
            total = add_bn_state(total, bn_state(swav))
            load_bn_state(swav, start)
        load_bn_state(swav, scaled_bn_state(total, len(micros)))
    stepped = par.step()
    if swav.head.queue_length:
        swav.head.push_queue(queue_rows(scored))
    par.run_on_full_params(swav.normalize_prototypes)
    par.zero_grad()
    return torch.stack(losses).mean(), bool(stepped)


@dataclass
class Progress:
    """Where the run is: steps and samples done, the lanes of the sample order (the first run's global batch),
    and what it ran on (world size, the data catalog's size) for checks on resume."""

    global_batch: int
    world_size: int
    catalog: dict[str, int] = field(default_factory=dict)
    step: int = 0
    samples: int = 0
    lanes: int = 0

    def __post_init__(self) -> None:
        self.lanes = self.lanes or self.global_batch

    def advance(self) -> None:
        self.step += 1
        self.samples += self.global_batch

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "samples": self.samples, "lanes": self.lanes, "global_batch": self.global_batch,
                "world_size": self.world_size, "catalog": dict(self.catalog)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.samples, self.lanes = int(state["step"]), int(state["samples"]), int(state["lanes"])


class ScalerPart:
    """The loss scaler's state (fp16) through the parallel wrapper."""

    def __init__(self, par: Any) -> None:
        self.par = par

    def state_dict(self) -> dict[str, Any] | None:
        return self.par.scaler_state()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.par.load_scaler_state(state)


class QueuePart:
    """How much of the SwAV queue is filled; its rows are checkpoint pieces (:mod:`bigseer.checkpoint.queue`).
    ``restore`` False: the run starts with an empty queue (the checkpoint had none, or the global batch changed)."""

    def __init__(self, head: Any, batch: int, restore: bool = True) -> None:
        self.head, self.batch, self.restore = head, batch, restore

    def state_dict(self) -> dict[str, int]:
        from bigseer.checkpoint.queue import queue_state

        return queue_state(self.head, self.batch)

    def load_state_dict(self, state: dict[str, int] | None) -> None:
        from bigseer.checkpoint.queue import load_queue_state

        if self.restore:
            load_queue_state(self.head, state, self.batch)


class TrainState:
    """The trainer's stateful parts saved by name: ``progress`` (its fields at the top level of
    ``trainer.pt``) and each of ``parts`` under its own name (``schedule``, ``scaler``, ``queue``, ``health``)."""

    def __init__(self, progress: Progress, **parts: Stateful) -> None:
        self.progress, self.parts = progress, parts

    def state_dict(self) -> dict[str, Any]:
        return {**self.progress.state_dict(), **{name: part.state_dict() for name, part in self.parts.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.progress.load_state_dict(state)
        for name, part in self.parts.items():
            if state.get(name):  # absent, None or empty: the part keeps its fresh state
                part.load_state_dict(state[name])
