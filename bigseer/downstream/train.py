"""The downstream run: fine-tuning, linear evaluation, low-shot, kNN and logistic probes under ``accelerate``.

``run_downstream(cfg)`` validates everything (flags, data folders, low-shot subset, weights, resume
checkpoint) before the first collective, then trains with SGD + step LR, evaluates top-1 / top-5 on the
centre-cropped validation set after every epoch, writes an atomic checkpoint each epoch and returns the
results dict (also written as ``results.json``). Data order and augmentation are seeded per (seed, epoch,
rank), so a resumed run reproduces the uninterrupted one. ``mode="probe"`` trains nothing: it extracts
frozen features once and fits low-shot logistic probes (:func:`bigseer.downstream.probe.run_probe`).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from bigseer.distributed import all_reduce_sum
from bigseer.downstream.config import EvalConfig
from bigseer.downstream.evaluate import evaluate_classifier, extract_features, topk_correct
from bigseer.downstream.finetune import FineTuneClassifier
from bigseer.downstream.knn import knn_predict
from bigseer.downstream.labeled_data import (
    LabeledImages,
    LabeledSplit,
    batch_ranges,
    eval_transform,
    scan_image_folder,
    shard_indices,
    train_transform,
)
from bigseer.downstream.launch_check import single_process_cpu_launch
from bigseer.downstream.linear import LinearProbe, freeze, pooled_features
from bigseer.downstream.lowshot import balanced_subset
from bigseer.downstream.run_state import resume_point, save_checkpoint, save_results
from bigseer.downstream.weights import fast_trunk, load_trunk
from bigseer.errors import CheckpointError, ConfigError, DataError
from bigseer.parallel.bn_stats import average_bn_stats


def lr_at(cfg: EvalConfig, epoch: int) -> float:
    """Step schedule: ``lr * gamma^(number of milestones <= epoch)`` (epochs counted from 0)."""
    return cfg.lr * cfg.lr_gamma ** sum(epoch >= m for m in cfg.lr_milestones)


def select_train_split(cfg: EvalConfig, train: LabeledSplit) -> tuple[LabeledSplit, list[int] | None]:
    """The training images the run may touch: all of them, or the low-shot subset (and its indices)."""
    if cfg.fraction is None:
        return train, None
    idx = balanced_subset(train.targets, cfg.fraction, seed=cfg.seed, class_names=train.classes)
    return train.subset(idx), idx


def build_classifier(cfg: EvalConfig, trunk: nn.Module, num_classes: int) -> nn.Module:
    """FineTuneClassifier when the trunk trains, else a LinearProbe on the frozen trunk."""
    if cfg.trains_trunk:
        return FineTuneClassifier(trunk, num_classes)
    return LinearProbe(trunk, num_classes, layer=cfg.layer, head_bn=cfg.head_bn)


def _seed_epoch(cfg: EvalConfig, epoch: int, rank: int) -> torch.Generator:
    seed = (cfg.seed * 1_000_003 + epoch * 1009 + rank) % (2**63)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _log(msg: str, main: bool) -> None:
    if main:
        print(msg, file=sys.stderr, flush=True)


def run_downstream(cfg: EvalConfig) -> dict[str, Any]:
    """Run one downstream evaluation; returns (and writes to ``output_dir/results.json``) the results."""
    cfg = cfg.resolved()
    if cfg.mode == "probe":
        return _run_probe(cfg)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size={cfg.batch_size} (global) must be divisible by the {world} processes")
    train_full, val = scan_image_folder(cfg.data)
    train, subset = select_train_split(cfg, train_full)
    if cfg.mode != "knn" and -(-len(train) // world) < 2:
        raise DataError(f"{len(train)} training image(s) over {world} process(es) leaves fewer than 2 per process; "
                        "BatchNorm needs at least 2: use more images, a larger fraction or fewer processes")
    state = resume_point(cfg)
    if state is not None and state.get("subset") != subset:
        raise CheckpointError(f"resume: the training images selected now differ from the checkpoint's "
                              f"(data under {cfg.data!r} changed?)")
    trunk = fast_trunk(load_trunk(cfg.weights, cfg.model, seed=cfg.seed), cfg.channels_last, cfg.compile, cfg.cpu)
    num_classes = len(train.classes)

    from accelerate import Accelerator  # lazy: `import bigseer` stays light

    accelerator = Accelerator(cpu=cfg.cpu)
    main, world = accelerator.is_main_process, accelerator.num_processes
    warning = single_process_cpu_launch(world)
    if warning:
        _log(warning, main)
    per_rank_batch = cfg.batch_size // world
    val_set = LabeledImages(val, eval_transform(cfg.eval_resize, cfg.eval_crop))
    results: dict[str, Any] = {
        "mode": cfg.mode, "model": cfg.model, "weights": cfg.weights, "params": str(trunk.params),
        "layer": cfg.layer if not cfg.trains_trunk else "res5", "fraction": cfg.fraction,
        "protocol": (cfg.lowshot_protocol if cfg.mode == "lowshot" else cfg.mode),
        "num_classes": num_classes, "classes": train.classes, "num_train_images": len(train),
        "num_train_images_available": len(train_full), "num_val_images": len(val), "world_size": world,
        "batch_size": cfg.batch_size, "config": cfg.to_dict(),
    }
    if cfg.mode == "knn":
        results.update(_run_knn(cfg, trunk, train, val_set, per_rank_batch, main))
    else:
        results.update(_run_training(cfg, accelerator, trunk, train, val_set, subset, state, per_rank_batch))
    if cfg.output_dir and main:
        save_results(cfg.output_dir, results)
    accelerator.wait_for_everyone()
    return results


def _run_probe(cfg: EvalConfig) -> dict[str, Any]:
    """``--mode probe``: logistic probes on frozen features (bigseer.downstream.probe), under accelerate."""
    from accelerate import Accelerator

    from bigseer.downstream.probe import run_probe

    accelerator = Accelerator(cpu=cfg.cpu)
    main = accelerator.is_main_process
    warning = single_process_cpu_launch(accelerator.num_processes)
    if warning:
        _log(warning, main)
    results = run_probe(replace(cfg, progress=cfg.progress and main))
    results.update({"mode": "probe", "model": cfg.model, "weights": cfg.weights, "layer": cfg.layer,
                    "world_size": accelerator.num_processes, "config": cfg.to_dict()})
    if cfg.output_dir and main:
        save_results(cfg.output_dir, results)
    accelerator.wait_for_everyone()
    return results


def _run_knn(cfg: EvalConfig, trunk: nn.Module, train: LabeledSplit, val_set: LabeledImages, batch: int,
             main: bool) -> dict[str, Any]:
    start = time.time()
    freeze(trunk)
    eval_tf = eval_transform(cfg.eval_resize, cfg.eval_crop)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return pooled_features(trunk, x, cfg.layer)

    train_f, train_y = extract_features(fn, LabeledImages(train, eval_tf), batch, cfg.num_workers)
    val_f, val_y = extract_features(fn, val_set, batch, cfg.num_workers)
    scores = knn_predict(train_f, train_y, val_f, len(train.classes), k=cfg.knn_k, temperature=cfg.knn_temperature)
    c1, c5 = topk_correct(scores, val_y)
    n = max(len(val_y), 1)
    final = {"epoch": 0, "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "time_s": round(time.time() - start, 2)}
    _log(f"knn k={cfg.knn_k} {cfg.layer}: top1 {final['top1']:.2f} top5 {final['top5']:.2f}", main)
    return {"history": [final], "final": final, "best_top1": final["top1"], "epochs": 0}


def _run_training(cfg: EvalConfig, accelerator: Any, trunk: nn.Module, train: LabeledSplit,
                  val_set: LabeledImages, subset: list[int] | None, state: dict[str, Any] | None,
                  per_rank_batch: int) -> dict[str, Any]:
    from tqdm.auto import tqdm

    main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)  # the new head's initialisation is part of the run's seed
        model = build_classifier(cfg, trunk, len(train.classes))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        _log(f"resumed from {cfg.output_dir} after epoch {start_epoch}", main)
    model, optimizer = accelerator.prepare(model, optimizer)
    train_set = LabeledImages(train, train_transform(cfg.train_crop, tuple(cfg.crop_scale), cfg.augment()))
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        lr = lr_at(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        gen = _seed_epoch(cfg, epoch, rank)
        idx = shard_indices(len(train_set), rank, world, shuffle=True, seed=cfg.seed, epoch=epoch, pad=True)
        loader = DataLoader(Subset(train_set, idx), batch_sampler=batch_ranges(len(idx), per_rank_batch),
                            num_workers=cfg.num_workers, generator=gen)
        model.train()
        loss_sum = torch.zeros(2, dtype=torch.float64)
        bar = tqdm(loader, desc=f"{cfg.mode} epoch {epoch + 1}/{cfg.epochs}", disable=not (main and cfg.progress),
                   file=sys.stderr, leave=False)
        for x, y in bar:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            loss_sum += torch.tensor([loss.item() * len(y), len(y)], dtype=torch.float64)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.3g}")
        bar.close()
        loss_sum = all_reduce_sum(loss_sum)
        # DDP syncs BN buffers only at a forward's start: make every rank's running statistics the mean over
        # ranks (as pretraining does before each checkpoint) so all ranks evaluate, and save, the same model
        average_bn_stats(accelerator.unwrap_model(model))
        metrics = evaluate_classifier(accelerator.unwrap_model(model), val_set, per_rank_batch, cfg.num_workers)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum[0].item() / max(loss_sum[1].item(), 1.0),
               "top1": metrics["top1"], "top5": metrics["top5"], "val_loss": metrics["loss"],
               "time_s": round(time.time() - t0, 2)}
        history.append(row)
        _log(f"epoch {epoch + 1}/{cfg.epochs} lr {lr:.4g} train_loss {row['train_loss']:.4f} "
             f"top1 {row['top1']:.2f} top5 {row['top5']:.2f} ({row['time_s']:.1f}s)", main)
        if cfg.output_dir:
            if main:
                save_checkpoint(cfg.output_dir, {
                    "epoch": epoch + 1, "model": accelerator.unwrap_model(model).state_dict(),
                    "optimizer": optimizer.state_dict(), "history": history, "config": cfg.to_dict(),
                    "classes": train.classes, "subset": subset, "world_size": world,
                })
            accelerator.wait_for_everyone()
    final = history[-1] if history else {}
    best = max((h["top1"] for h in history), default=float("nan"))
    return {"history": history, "final": final, "best_top1": best, "epochs": cfg.epochs}
