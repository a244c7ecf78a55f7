"""Proof that SwAV pretraining helps: the same RegNetY trunk, pretrained vs random init, on real images.

Dataset: scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, 10 classes; offline, no
download), upsampled to ``--size`` px RGB PNGs in a temporary ImageFolder with a stratified 80/20
train/val split. It is the only real labeled image set that ships with our dependencies (torchvision's
datasets all download; scikit-learn's other image sets are 2 photos or need fetching).

1. SwAV-pretrain ``--model`` on the *train images only* (labels unused) for ``--pretrain_steps`` steps
   (wall time recorded: that is the CPU budget), through bigseer's parts (``--pretrainer components``)
   or ``bigseer.engine.pretrain`` (the default).
2. Evaluate the exported trunk and the same preset at random init (seeded), in the same run, with
   bigseer.downstream: kNN (frozen res5), linear probe (frozen res4 and res5), low-shot fine-tuning on
   10% and 1% of the training images and labels.
3. Print a side-by-side table (pretrained, random, difference) and optionally write it as markdown.

Augmentation matters here: with SEER's ImageNet recipe (crop scale down to 0.14 / 0.05, aspect 3/4-4/3,
flips, colour strength 1.0, blur) the two views of a digit share almost nothing in a randomly initialised
32 px RegNet's train-mode features, the swapped prediction has no signal, and SwAV falls into its
trivial fixed point (loss = ln K, all embeddings equal). The default here is a digit-sized recipe: two
square 32 px crops of scale 0.7-1, no flip (digits are not mirror-symmetric), brightness/contrast jitter
0.4, no grayscale/blur (see benchmarks/results/downstream.md); both pretrainers use it (the engine through
``PretrainConfig`` flip_p / jitter_strength / grayscale_p / blur_p / crop_ratio).

    .venv/bin/python benchmarks/bench_pretraining_helps.py --markdown benchmarks/results/downstream.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch
from PIL import Image

from bigseer.downstream.config import EvalConfig
from bigseer.downstream.labeled_data import write_image_folder
from bigseer.downstream.train import run_downstream


def write_digits_folder(root: str, size: int, seed: int = 0, val_fraction: float = 0.2) -> dict[str, int]:
    """Digits as ``size`` px RGB PNGs under ``root/train|val/<digit>/`` (stratified split)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).round().astype(np.uint8)
    labels = digits.target
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(idx) * val_fraction))
        val_idx += idx[:n_val].tolist()
        train_idx += idx[n_val:].tolist()

    def up(img: np.ndarray) -> np.ndarray:
        big = Image.fromarray(img).resize((size, size), Image.BICUBIC)
        return np.stack([np.asarray(big)] * 3, axis=-1)

    names = [str(c) for c in range(10)]
    for split, idx in (("train", sorted(train_idx)), ("val", sorted(val_idx))):
        write_image_folder(root, split, [up(images[i]) for i in idx], labels[idx].tolist(), names)
    return {"train": len(train_idx), "val": len(val_idx)}


def augment_config(args: argparse.Namespace) -> "AugmentConfig":
    """The pretraining augmentation of the components pretrainer (the engine gets the same via PretrainConfig)."""
    from bigseer.data.multicrop import AugmentConfig

    ratio = (1.0, 1.0) if args.crop_ratio == "square" else (3.0 / 4.0, 4.0 / 3.0)
    return AugmentConfig(flip_p=args.flip_p, jitter_strength=args.jitter, grayscale_p=args.grayscale_p,
                         blur_p=args.blur_p, ratio=ratio)


def pretrain_trunk(args: argparse.Namespace, train_dir: str, out_dir: str) -> tuple[str, dict[str, Any]]:
    """SwAV pretraining with bigseer's engine; returns the exported trunk path and run facts."""
    from bigseer.config import PretrainConfig
    from bigseer.engine import pretrain

    cfg = PretrainConfig(model=args.model, data=train_dir, output_dir=out_dir, max_steps=args.pretrain_steps,
                         batch_size=args.pretrain_batch, crops=args.crops, base_lr=args.pretrain_lr,
                         warmup_steps=min(args.pretrain_steps // 10, 100), num_prototypes=args.prototypes,
                         embed_dim=args.embed_dim, head_dims=(args.head_hidden,), epsilon=args.epsilon,
                         temperature=0.1, sinkhorn_iters=3, queue_length=args.queue_length,
                         freeze_prototypes_iters=args.freeze_prototypes, seed=args.seed, backend="none",
                         zero_init_last=args.zero_init_last, flip_p=args.flip_p, jitter_strength=args.jitter,
                         grayscale_p=args.grayscale_p, blur_p=args.blur_p,
                         crop_ratio=(1.0, 1.0) if args.crop_ratio == "square" else (3 / 4, 4 / 3),
                         num_workers=args.workers, log_every=max(args.pretrain_steps // 20, 1))
    t0 = time.time()
    result = pretrain(cfg)
    wall = time.time() - t0
    losses = list(result.losses)
    k = max(len(losses) // 10, 1)
    facts = {"steps": result.steps, "wall_s": round(wall, 1), "first_loss": float(np.mean(losses[:k])),
             "last_loss": float(np.mean(losses[-k:])), "log_K": math.log(args.prototypes),
             "images_seen": result.steps * args.pretrain_batch, "crops": args.crops, "pretrainer": "engine"}
    if result.export_path is None:
        raise SystemExit("pretraining exported no trunk (export disabled?)")
    return str(result.export_path), facts


def pretrain_with_components(args: argparse.Namespace, train_dir: str, out_dir: str) -> tuple[str, dict[str, Any]]:
    """The same SwAV recipe driven directly through bigseer's parts (RegNet, SwAVHead/SwAVModel,
    MultiCropStream, LARS, WarmupCosine), single process: used when ``bigseer.engine`` is not usable."""
    from safetensors.torch import save_file

    from bigseer.data import MultiCropStream
    from bigseer.models import build_regnet
    from bigseer.optim import LARS, WarmupCosine
    from bigseer.ssl import SwAVHead, SwAVModel

    torch.manual_seed(args.seed)
    trunk = build_regnet(args.model, zero_init_last=args.zero_init_last)
    head = SwAVHead(trunk.num_features, [args.head_hidden], args.embed_dim, args.prototypes,
                    queue_length=args.queue_length)
    if args.head_bn:
        # SwAV's original projection head has BatchNorm after the hidden layer (SEER's has none); the extra
        # non-affine BatchNorm on the output removes the component shared by all samples, which is how the
        # tiny trunks here collapse (see benchmarks/results/downstream.md). Only the head changes: the
        # exported trunk is the plain bigseer RegNet.
        from torch import nn

        head.projection = nn.Sequential(nn.Linear(trunk.num_features, args.head_hidden),
                                        nn.BatchNorm1d(args.head_hidden), nn.ReLU(inplace=True),
                                        nn.Linear(args.head_hidden, args.embed_dim),
                                        nn.BatchNorm1d(args.embed_dim, affine=False))
    model = SwAVModel(trunk, head, temperature=0.1, epsilon=args.epsilon, sinkhorn_iters=3,
                      freeze_prototypes_iters=args.freeze_prototypes)
    peak = args.pretrain_lr * args.pretrain_batch / 256
    warmup = min(args.pretrain_steps // 10, 100)
    schedule = WarmupCosine(start_lr=peak / 64, peak_lr=peak, warmup_steps=warmup,
                            total_steps=args.pretrain_steps, final_lr=peak * 0.001)
    opt = LARS(model.parameters(), lr=schedule(0), momentum=0.9, weight_decay=1e-5)
    stream = MultiCropStream(train_dir, args.crops, args.pretrain_batch, seed=args.seed, num_workers=args.workers,
                             augment=augment_config(args))
    losses: list[float] = []
    t0 = time.time()
    model.train()
    for step, batch in enumerate(stream):
        if step >= args.pretrain_steps:
            break
        for g in opt.param_groups:
            g["lr"] = schedule(step)
        loss = model(batch.crops)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        model.on_after_backward(step)
        opt.step()
        model.normalize_prototypes()
        losses.append(float(loss.detach()))
        if step % max(args.pretrain_steps // 20, 1) == 0:
            print(f"pretrain step {step} loss {losses[-1]:.4f} lr {schedule(step):.4g} "
                  f"({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
    wall = time.time() - t0
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "model.safetensors")
    save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, path)
    k = max(len(losses) // 10, 1)
    return path, {"steps": len(losses), "wall_s": round(wall, 1), "first_loss": float(np.mean(losses[:k])),
                  "last_loss": float(np.mean(losses[-k:])), "log_K": math.log(args.prototypes),
                  "images_seen": len(losses) * args.pretrain_batch, "crops": args.crops,
                  "pretrainer": "components"}


def evaluate(source: dict[str, Any], data: str, args: argparse.Namespace) -> dict[str, float]:
    """kNN, linear probes and low-shot fine-tuning of one trunk; top-1 (%) per protocol."""
    common = dict(data=data, model=args.model, train_crop=args.size, eval_resize=int(round(args.size * 256 / 224)),
                  eval_crop=args.size, cpu=True, progress=False, seed=args.seed, num_workers=0,
                  color_jitter=0.0, grayscale_prob=0.0, blur_prob=0.0, crop_scale=[0.35, 1.0], **source)
    out: dict[str, float] = {}
    t0 = time.time()
    out["knn res5 (k=20)"] = run_downstream(EvalConfig(mode="knn", batch_size=256, **common))["final"]["top1"]
    for layer in ("res4", "res5"):
        res = run_downstream(EvalConfig(mode="linear", layer=layer, epochs=args.linear_epochs, batch_size=64,
                                        lr=args.linear_lr, lr_milestones=[max(int(args.linear_epochs * 0.7), 1)],
                                        **common))
        out[f"linear {layer}"] = res["final"]["top1"]
    for frac in (0.1, 0.01):
        res = run_downstream(EvalConfig(mode="lowshot", fraction=frac, epochs=args.lowshot_epochs,
                                        batch_size=32, lr=args.lowshot_lr,
                                        lr_milestones=[max(int(args.lowshot_epochs * 30 / 35), 1)], **common))
        out[f"low-shot {int(frac * 100)}% fine-tune"] = res["final"]["top1"]
    out["eval_wall_s"] = round(time.time() - t0, 1)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="regnety_tiny")
    p.add_argument("--size", type=int, default=32, help="digit image size (px) after upsampling")
    p.add_argument("--pretrain_steps", type=int, default=3000)
    p.add_argument("--pretrain_batch", type=int, default=64)
    p.add_argument("--pretrain_lr", type=float, default=0.6, help="base lr (peak = base * batch / 256)")
    p.add_argument("--crops", default="2x32@0.7-1")
    p.add_argument("--prototypes", type=int, default=100)
    p.add_argument("--embed_dim", type=int, default=64)
    p.add_argument("--head_hidden", type=int, default=256)
    p.add_argument("--epsilon", type=float, default=0.05)
    p.add_argument("--queue_length", type=int, default=0)
    p.add_argument("--freeze_prototypes", type=int, default=0)
    p.add_argument("--zero_init_last", action="store_true",
                   help="zero-gamma on each block's last BN (both pretrainers). "
                        "Off by default: on 32 px images every block then starts as its 1x1 stride-2 shortcut, "
                        "so res5 depends only on the top-left input pixels")
    p.add_argument("--head_bn", action="store_true",
                   help="components pretrainer: SwAV's BN projection head + non-affine BN on the embedding")
    p.add_argument("--flip_p", type=float, default=0.0, help="pretraining: horizontal flip probability")
    p.add_argument("--jitter", type=float, default=0.4, help="pretraining: colour jitter strength")
    p.add_argument("--grayscale_p", type=float, default=0.0, help="pretraining: grayscale probability")
    p.add_argument("--blur_p", type=float, default=0.0, help="pretraining: Gaussian blur probability")
    p.add_argument("--crop_ratio", choices=("square", "swav"), default="square",
                   help="pretraining: RandomResizedCrop aspect ratio 1, or SwAV's 3/4-4/3")
    p.add_argument("--linear_epochs", type=int, default=20)
    p.add_argument("--linear_lr", type=float, default=0.1)
    p.add_argument("--lowshot_epochs", type=int, default=35)
    p.add_argument("--lowshot_lr", type=float, default=0.0125)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrainer", choices=("engine", "components"), default="engine",
                   help="bigseer.engine.pretrain, or the same recipe driven through bigseer's parts")
    p.add_argument("--weights", default=None, help="skip pretraining: evaluate this export instead")
    p.add_argument("--workdir", default=None, help="keep data / runs here (default: a temp dir)")
    p.add_argument("--markdown", default=None, help="append the results section to this file")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    work = args.workdir or tempfile.mkdtemp(prefix="bigseer_bench_")
    data = os.path.join(work, "digits")
    if not os.path.isdir(os.path.join(data, "val")):
        sizes = write_digits_folder(data, args.size, seed=args.seed)
    else:
        sizes = {s: sum(len(f) for _, _, f in os.walk(os.path.join(data, s))) for s in ("train", "val")}
    print(f"digits: {sizes['train']} train / {sizes['val']} val images at {args.size} px in {data}", file=sys.stderr)
    load_before = os.getloadavg()

    facts: dict[str, Any] = {}
    weights = args.weights
    if weights is None:
        run = pretrain_trunk if args.pretrainer == "engine" else pretrain_with_components
        weights, facts = run(args, os.path.join(data, "train"), os.path.join(work, "pretrain"))
        print(f"pretraining: {json.dumps(facts)}", file=sys.stderr)
    load_mid = os.getloadavg()
    pre = evaluate({"weights": weights}, data, args)
    rnd = evaluate({"weights": None}, data, args)
    load_after = os.getloadavg()

    rows = [k for k in pre if k != "eval_wall_s"]
    lines = ["| protocol (digits val top-1 %) | SwAV-pretrained | random init | difference |", "|---|---|---|---|"]
    for k in rows:
        lines.append(f"| {k} | {pre[k]:.2f} | {rnd[k]:.2f} | {pre[k] - rnd[k]:+.2f} |")
    wins = sum(pre[k] > rnd[k] for k in rows)
    verdict = f"pretrained beats random init on {wins}/{len(rows)} protocols"
    collapsed = bool(facts) and facts["last_loss"] > facts["log_K"] - 0.05
    if collapsed:
        verdict += (f"; COLLAPSED: SwAV loss ended at {facts['last_loss']:.4f}, ln K = {facts['log_K']:.4f} "
                    "(all embeddings equal; see benchmarks/results/downstream.md)")
    table = "\n".join(lines)
    print(table)
    print(verdict)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    summary = {"pretrained": pre, "random": rnd, "pretraining": facts,
               "load_avg_before": load_before, "load_avg_after_pretrain": load_mid, "load_avg_end": load_after}
    print(json.dumps(summary))
    if args.markdown:
        cmd = "  ".join([".venv/bin/python benchmarks/bench_pretraining_helps.py", *sys.argv[1:]])
        with open(args.markdown, "a") as f:
            f.write(f"\n### Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n`{cmd}`\n\n")
            if facts:
                f.write(f"Pretraining via {facts['pretrainer']} ({args.model}, {facts['steps']} steps x batch {args.pretrain_batch}, crops "
                        f"{args.crops}): {facts['wall_s']} s wall on 2 shared CPU cores; SwAV loss "
                        f"{facts['first_loss']:.3f} (first 10%) -> {facts['last_loss']:.3f} (last 10%), "
                        f"ln K = {facts['log_K']:.3f}.\n\n")
            f.write(table + "\n\n" + verdict + ".\n\n")
            f.write(f"Evaluation wall time: {pre['eval_wall_s']} s (pretrained), {rnd['eval_wall_s']} s (random). "
                    f"Load average (1/5/15 min) before {load_before}, after pretraining {load_mid}, end "
                    f"{load_after}; `{uptime}`.\n")
    return 2 if collapsed else 0


if __name__ == "__main__":
    sys.exit(main())
