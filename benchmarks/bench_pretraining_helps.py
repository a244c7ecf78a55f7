"""Does SwAV pretraining with bigseer's default (``auto``) recipe help? Low-shot logistic probes on real images.

Data (offline): scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, 10 classes), upsampled to
``--size`` px RGB PNGs; or Fashion-MNIST (``--dataset fashion``: the idx files of Debian's
``dataset-fashion-mnist`` package, /usr/share/datasets/fashion-mnist, or ``--fashion_dir``). A stratified
split (seed ``--seed``) gives train / val ImageFolders. Pretraining sees the train images only (labels unused).

Splits and honesty: ``--split select`` judges on a *dev* split carved from train (25% of each class, seeded;
probes fit on the other 75%): that is where recipes are compared and chosen. ``--split judge`` (default)
reports on val, which recipe selection never looks at.

Steps: (1) SwAV-pretrain ``--model`` through ``bigseer.engine.pretrain`` with PretrainConfig defaults plus the
chosen recipe's overrides (``--recipe auto``: :func:`bigseer.recipe.auto_recipe` on the train folder's
image headers), recording the SwAV health statistics (``head.last_stats``) each step and replaying them
through :class:`bigseer.health.CollapseDetector`; (2) frozen res5 features of the pretrained trunk, the same
preset at random init, and raw pixels; (3) logistic probes (``bigseer.downstream.probe``): k = 1, 2, 5, 10
labeled images per class and 1% / 10% of the labels, mean ± std over ``--draws`` draws. CPU seconds
(this process and its loader workers) and load averages are recorded.

    .venv/bin/python benchmarks/bench_pretraining_helps.py --size 32 --markdown /tmp/digits32.md
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from bigseer.downstream.labeled_data import LabeledSplit, scan_image_folder, write_image_folder
from bigseer.downstream.probe import format_table, pixel_features, probe_features, trunk_features

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
README_SMALL = {"crops": "2x32@0.7-1", "flip_p": 0.0, "jitter_strength": 0.4, "grayscale_p": 0.0, "blur_p": 0.0,
                "crop_ratio": (1.0, 1.0), "zero_init_last": False}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children (DataLoader workers)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def _stratified(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(idx) * val_fraction))
        val_idx += idx[:n_val].tolist()
        train_idx += idx[n_val:].tolist()
    return sorted(train_idx), sorted(val_idx)


def _write(root: str, images: np.ndarray, labels: np.ndarray, size: int, names: list[str], seed: int,
           val_fraction: float) -> dict[str, int]:
    def up(img: np.ndarray) -> np.ndarray:
        big = Image.fromarray(img).resize((size, size), Image.BICUBIC)
        return np.stack([np.asarray(big)] * 3, axis=-1)

    train_idx, val_idx = _stratified(labels, val_fraction, seed)
    for split, idx in (("train", train_idx), ("val", val_idx)):
        write_image_folder(root, split, [up(images[i]) for i in idx], labels[idx].tolist(), names)
    return {"train": len(train_idx), "val": len(val_idx)}


def write_digits_folder(root: str, size: int, seed: int = 0, val_fraction: float = 0.2) -> dict[str, int]:
    """Digits as ``size`` px RGB PNGs under ``root/train|val/<digit>/`` (stratified split)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).round().astype(np.uint8)
    return _write(root, images, digits.target, size, [str(c) for c in range(10)], seed, val_fraction)


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def write_fashion_folder(root: str, size: int, fashion_dir: str, count: int, seed: int = 0,
                         val_fraction: float = 0.2) -> dict[str, int]:
    """``count`` Fashion-MNIST test-set images (a seeded class-balanced pick) as ``size`` px RGB PNGs."""
    images = _read_idx(os.path.join(fashion_dir, "t10k-images-idx3-ubyte.gz"))
    labels = _read_idx(os.path.join(fashion_dir, "t10k-labels-idx1-ubyte.gz")).astype(np.int64)
    rng = np.random.default_rng(seed + 1000)
    per = count // 10
    pick = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per] for c in range(10)]))
    return _write(root, images[pick], labels[pick], size, FASHION_CLASSES, seed, val_fraction)


def dev_split(train: LabeledSplit, fraction: float = 0.25, seed: int = 0) -> tuple[list[int], list[int]]:
    """Per class, a seeded ``fraction`` of the train images as the dev set; the rest is the probe's pool."""
    pool, dev = _stratified(np.asarray(train.targets), fraction, seed + 7)
    return pool, dev


@contextlib.contextmanager
def recording_stats() -> Iterator[list[dict[str, float]]]:
    """Collect ``head.last_stats`` after every SwAVHead forward (single process; the engine is untouched)."""
    from bigseer.ssl.head import SwAVHead

    trace: list[dict[str, float]] = []
    real = SwAVHead.forward

    def forward(self, *a, **k):
        out = real(self, *a, **k)
        if self.last_stats is not None and self.training:
            trace.append(self.last_stats.as_dict())
        return out

    SwAVHead.forward = forward
    try:
        yield trace
    finally:
        SwAVHead.forward = real


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``--set key=value`` overrides: booleans, numbers, comma tuples, else strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, _, text = item.partition("=")
        if text in ("true", "false"):
            out[key] = text == "true"
        elif "," in text and "x" not in text:
            out[key] = tuple(float(v) if "." in v else int(v) for v in text.split(","))
        else:
            try:
                out[key] = int(text)
            except ValueError:
                try:
                    out[key] = float(text)
                except ValueError:
                    out[key] = text
    return out


def choose_recipe(args: argparse.Namespace, train_dir: str) -> tuple[dict[str, Any], str]:
    """The pretraining overrides and a one-line description."""
    from bigseer.recipe import probe_data, recipe_flags, recipe_for

    if args.recipe in ("auto", "seer"):
        recipe = recipe_for(args.recipe, probe=probe_data(train_dir) if args.recipe == "auto" else None)
        if args.recipe == "seer":  # SEER's augmentation and head, on this benchmark's model and budget
            keep = ("crops", "flip_p", "jitter_strength", "grayscale_p", "blur_p", "crop_ratio", "zero_init_last",
                    "head_dims", "embed_dim", "num_prototypes", "sinkhorn_iters", "freeze_prototypes_iters")
            over = {k: v for k, v in recipe.overrides.items() if k in keep}
        else:
            over = dict(recipe.overrides)
        desc = recipe.description
    elif args.recipe == "readme":
        over, desc = dict(README_SMALL), "README small-image flags"
    else:
        over, desc = {}, "PretrainConfig defaults"
    sets = parse_sets(args.set)
    over.update(sets)
    if sets:
        desc += f"; --set {recipe_flags(sets)}"
    return over, desc


def pretrain_trunk(args: argparse.Namespace, train_dir: str, out_dir: str) -> tuple[str, dict[str, Any]]:
    """SwAV pretraining with bigseer's engine (defaults + recipe overrides); returns the export and run facts."""
    from bigseer.config import PretrainConfig
    from bigseer.engine import pretrain
    from bigseer.health import CollapseDetector

    over, desc = choose_recipe(args, train_dir)
    cfg = PretrainConfig(model=args.model, data=train_dir, output_dir=out_dir, max_steps=args.pretrain_steps,
                         batch_size=args.pretrain_batch, seed=args.seed, backend="none", num_workers=args.workers,
                         log_every=max(args.pretrain_steps // 10, 1), **over)
    print(f"pretraining: {desc}", file=sys.stderr, flush=True)
    t0, c0 = time.time(), cpu_seconds()
    with recording_stats() as trace:
        result = pretrain(cfg)
    wall, cpu = time.time() - t0, cpu_seconds() - c0
    detector = CollapseDetector.for_config(cfg.to_dict(), median_side=args.size)
    warning = None
    for step, stats in enumerate(trace, 1):
        warning = detector.update(step, stats) or warning
    losses = list(result.losses)
    k = max(len(losses) // 10, 1)
    last = trace[-1] if trace else {}
    facts = {"steps": result.steps, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "recipe": desc,
             "overrides": {kk: (list(v) if isinstance(v, tuple) else v) for kk, v in over.items()},
             "first_loss": float(np.mean(losses[:k])), "last_loss": float(np.mean(losses[-k:])),
             "log_K": math.log(cfg.num_prototypes), "batch": args.pretrain_batch,
             "last_stats": {kk: last[kk] for kk in ("loss_ratio", "code_entropy", "prototypes_used",
                                                   "embed_std_ratio", "pred_entropy") if kk in last},
             "collapse_warning": warning}
    with open(os.path.join(out_dir, "stats_trace.json"), "w") as f:
        json.dump(trace, f)
    if result.export_path is None:
        raise SystemExit("pretraining exported no trunk (export disabled?)")
    return str(result.export_path), facts


def evaluate(args: argparse.Namespace, data: str, weights: str | None) -> dict[str, dict[str, Any]]:
    """Probe results of the pretrained trunk, the random-init preset and raw pixels on the chosen split."""
    from bigseer.downstream.weights import load_trunk

    train, val = scan_image_folder(data)
    sources: dict[str, Any] = {}
    if weights is not None:
        sources["SwAV-pretrained"] = load_trunk(weights, args.model)
    if not args.no_baselines:
        sources["random init"] = load_trunk(None, args.model, seed=args.seed)
        sources["raw pixels"] = None
    out: dict[str, dict[str, Any]] = {}
    for name, trunk in sources.items():
        t0 = time.time()

        def feats(split: LabeledSplit) -> tuple[torch.Tensor, torch.Tensor]:
            if trunk is None:
                return pixel_features(split, args.size, args.size)
            return trunk_features(trunk, split, "res5", args.size, args.size)

        tr_f, tr_y = feats(train)
        if args.split == "select":
            pool, dev = dev_split(train, seed=args.seed)
            fit_f, fit_y, ev_f, ev_y = tr_f[pool], tr_y[pool], tr_f[dev], tr_y[dev]
        else:
            va_f, va_y = feats(val)
            fit_f, fit_y, ev_f, ev_y = tr_f, tr_y, va_f, va_y
        res = probe_features(fit_f, fit_y.tolist(), ev_f, ev_y.tolist(), shots=args.shots,
                             fractions=args.fractions, draws=args.draws, seed=args.seed, class_names=train.classes)
        print(f"{name}: {format_table(res)} ({time.time() - t0:.1f}s)", file=sys.stderr, flush=True)
        out[name] = res
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per budget, one column per feature source (mean ± std over draws)."""
    names = list(results)
    budgets_ = list(next(iter(results.values())))
    lines = ["| labeled images | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for b in budgets_:
        n = next(iter(results.values()))[b]["labeled"]
        cells = [f"{results[s][b]['mean']:.1f} ± {results[s][b]['std']:.1f}" for s in names]
        lines.append(f"| {b} ({n}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(results: dict[str, dict[str, Any]]) -> tuple[str, bool]:
    """Goal: pretrained beats raw pixels at 1- and 5-shot and random init by >= 10 points there."""
    if "SwAV-pretrained" not in results or "raw pixels" not in results:
        return "no comparison (pretrained trunk or baselines missing)", False
    pre, rnd, pix = (results[k] for k in ("SwAV-pretrained", "random init", "raw pixels"))
    parts, ok = [], True
    for b in ("1-shot", "5-shot"):
        if b not in pre:
            continue
        d_pix, d_rnd = pre[b]["mean"] - pix[b]["mean"], pre[b]["mean"] - rnd[b]["mean"]
        ok = ok and d_pix > 0 and d_rnd >= 10
        parts.append(f"{b}: {d_pix:+.1f} vs raw pixels, {d_rnd:+.1f} vs random init")
    return ("goal met" if ok else "goal NOT met") + " (" + "; ".join(parts) + ")", ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=("digits", "fashion"), default="digits")
    p.add_argument("--fashion_dir", default=FASHION_DIR, help="folder with Fashion-MNIST t10k-*-idx*-ubyte.gz")
    p.add_argument("--fashion_count", type=int, default=2000, help="Fashion-MNIST test images used (balanced)")
    p.add_argument("--size", type=int, default=32, help="image size (px) after upsampling")
    p.add_argument("--split", choices=("judge", "select"), default="judge",
                   help="judge: report on val; select: on a dev split of train (for choosing recipes)")
    p.add_argument("--model", default="regnety_tiny")
    p.add_argument("--recipe", choices=("auto", "readme", "default", "seer"), default="auto",
                   help="auto: bigseer.recipe.auto_recipe; readme: README small-image flags; default: "
                        "PretrainConfig defaults; seer: SEER's augmentation and head")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="extra PretrainConfig override (repeatable), e.g. --set flip_p=0")
    p.add_argument("--pretrain_steps", type=int, default=1000)
    p.add_argument("--pretrain_batch", type=int, default=64)
    p.add_argument("--shots", type=int, nargs="*", default=[1, 2, 5, 10])
    p.add_argument("--fractions", type=float, nargs="*", default=[0.01, 0.1])
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default=None, help="skip pretraining: evaluate this export instead")
    p.add_argument("--no_pretrain", action="store_true", help="baselines only (random init, raw pixels)")
    p.add_argument("--no_baselines", action="store_true", help="pretrained trunk only (recipe sweeps)")
    p.add_argument("--run_name", default="pretrain", help="pretraining output folder under --workdir")
    p.add_argument("--workdir", default=None, help="keep data / runs here (default: a temp dir)")
    p.add_argument("--markdown", default=None, help="append the results section to this file")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    work = args.workdir or tempfile.mkdtemp(prefix="bigseer_bench_")
    data = os.path.join(work, f"{args.dataset}{args.size}")
    if not os.path.isdir(os.path.join(data, "val")):
        if args.dataset == "digits":
            sizes = write_digits_folder(data, args.size, seed=args.seed)
        else:
            sizes = write_fashion_folder(data, args.size, args.fashion_dir, args.fashion_count, seed=args.seed)
    else:
        sizes = {s: sum(len(f) for _, _, f in os.walk(os.path.join(data, s))) for s in ("train", "val")}
    print(f"{args.dataset}: {sizes['train']} train / {sizes['val']} val images at {args.size} px in {data}",
          file=sys.stderr)
    load_before = os.getloadavg()
    t_start, c_start = time.time(), cpu_seconds()
    facts: dict[str, Any] = {}
    weights = args.weights
    if weights is None and not args.no_pretrain:
        weights, facts = pretrain_trunk(args, os.path.join(data, "train"), os.path.join(work, args.run_name))
        print(f"pretraining: {json.dumps(facts)}", file=sys.stderr)
    load_mid = os.getloadavg()
    c_eval = cpu_seconds()
    results = evaluate(args, data, weights)
    cpu_total, wall_total = cpu_seconds() - c_start, time.time() - t_start
    load_after = os.getloadavg()
    md = table(results)
    text, ok = verdict(results)
    print(md)
    print(text)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    summary = {"results": results, "pretraining": facts, "cpu_s_total": round(cpu_total, 1),
               "cpu_s_eval": round(cpu_seconds() - c_eval, 1), "wall_s_total": round(wall_total, 1),
               "load_avg_before": load_before, "load_avg_after_pretrain": load_mid, "load_avg_end": load_after}
    print(json.dumps(summary))
    if args.markdown:
        cmd = " ".join([".venv/bin/python benchmarks/bench_pretraining_helps.py", *sys.argv[1:]])
        with open(args.markdown, "a") as f:
            f.write(f"\n#### {args.dataset} {args.size} px, split {args.split} "
                    f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n`{cmd}`\n\n")
            if facts:
                f.write(f"Pretraining ({args.model}, {facts['steps']} steps x batch {facts['batch']}, "
                        f"{facts['recipe']}): {facts['wall_s']} s wall, {facts['cpu_s']} CPU s; SwAV loss "
                        f"{facts['first_loss']:.3f} (first 10%) -> {facts['last_loss']:.3f} (last 10%), "
                        f"ln K = {facts['log_K']:.3f}; last stats {json.dumps(facts['last_stats'])}; "
                        f"collapse detector: {facts['collapse_warning'] or 'quiet'}.\n\n")
            f.write(f"Val top-1 % of the logistic probe ({args.split} split), mean ± std over {args.draws} "
                    f"draws; (n) = labeled images:\n\n{md}\n\n{text}.\n\n")
            f.write(f"Total {round(cpu_total)} CPU s / {round(wall_total)} s wall (evaluation "
                    f"{summary['cpu_s_eval']} CPU s). Load average before {tuple(round(x, 2) for x in load_before)}, "
                    f"after pretraining {tuple(round(x, 2) for x in load_mid)}, end "
                    f"{tuple(round(x, 2) for x in load_after)}; `{uptime}`.\n")
    return 0 if ok or not facts else 3


if __name__ == "__main__":
    sys.exit(main())
