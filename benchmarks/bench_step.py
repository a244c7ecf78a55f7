"""One full SwAV pretraining step on 2 ranks: bigseer's engine pieces vs the loop a user writes from timm + lightly.

Both variants train the same RegNetY trunk (bigseer preset and its timm twin, ``bigseer.models.TIMM_NAMES``),
the same head shape (hidden MLP, L2-normalised embedding, K prototypes), the same crops, per-rank batch,
Sinkhorn settings (temperature 0.1, epsilon 0.05, 3 iterations, crops 0 and 1 assign, Sinkhorn over the
global batch) and optimizer (LARS, momentum 0.9, trust 0.001), fp32, DDP on gloo, on the same folder of
generated camera-like JPEGs:

  bigseer   what ``bigseer.engine.pretrain`` runs, from ``bigseer.trainer``: ``build_swav_model`` ->
            ``bigseer.parallel.setup`` (ddp, ``lars_factory``, ``build_schedule``) -> ``build_stream``
            (``MultiCropStream``: reduced-size JPEG decode, uint8 augmentations); per step: ``swav_step`` (set_lr,
            forward: one trunk call per resolution, Sinkhorn + loss inside; backward, step, prototype
            normalisation, zero_grad) and the engine's per-step stats all-gather (``train_log.step_stats``).
  baseline  (``benchmarks/step_baseline.py``) the loop from lightly's SwAV example:
            ``timm.create_model(name, num_classes=0)`` +
            ``lightly`` ``SwaVProjectionHead`` / ``SwaVPrototypes`` / ``SwaVLoss(sinkhorn_gather_distributed=True)``
            / ``lightly.utils.lars.LARS``, ``torch.nn.parallel.DistributedDataParallel`` (defaults), and
            torchvision ``ImageFolder`` + one ``transforms.v2.Compose`` per crop (SwAV's augmentations) through a
            ``DataLoader`` with ``DistributedSampler``; per step: normalise prototypes, one model call per crop,
            ``SwaVLoss(high, low)``, backward, step, zero_grad, ``loss.item()``.

  baseline-grouped  the same baseline with the crops of one resolution concatenated into one model call (as SwAV's
            reference and bigseer do): separates "fewer, larger trunk calls" from everything else.

Timing: all variants are built once per rank; then for each repeat each variant runs ``--warmup`` untimed and
``--steps`` timed steps, variants interleaved with the order rotated per repeat. A block's wall time is taken between barriers
(images/s = global batch x steps / wall), the ratio is formed inside each repeat, and the report quotes the
median of the per-repeat ratios. Per-step phases are measured on every rank and averaged over ranks:
data (waiting for the next batch), forward (model + loss, incl. Sinkhorn's all-reduces), backward (incl. DDP's
gradient all-reduce), optimizer (LR, step, prototype normalisation, zero_grad), other (the per-step loss
read-out). Collectives make a fast rank wait for a slow one inside whichever phase holds the next collective.

    .venv/bin/python benchmarks/bench_step.py --out benchmarks/results/step.md   # launches torchrun, 2 ranks
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from report import emit, uptime  # noqa: E402  (benchmarks/report.py)
from step_baseline import PHASES, BaselineVariant  # noqa: E402  (benchmarks/step_baseline.py)

VARIANTS = ("bigseer", "baseline", "baseline-grouped")
LABELS = {"bigseer": "bigseer (MultiCropStream + build_swav_model + parallel.setup ddp + LARS + swav_step)",
          "baseline": "timm + lightly SwaV head/prototypes/loss/LARS + torch DDP + torchvision v2 DataLoader",
          "baseline-grouped": "the same baseline, crops of one resolution concatenated into one model call"}


# ---------------------------------------------------------------------------------------------- variants
class BigseerVariant:
    """The engine's pieces, wired the way ``bigseer.engine.pretrain`` wires them (DDP, fp32, no SyncBN):
    ``bigseer.trainer``'s model, schedule, LARS factory, stream and ``swav_step``."""

    def __init__(self, args: argparse.Namespace, rank: int, world: int) -> None:
        import torch

        from bigseer import parallel
        from bigseer.config import PretrainConfig, validate
        from bigseer.trainer import build_schedule, build_stream, build_swav_model, lars_factory

        cfg = PretrainConfig(model=args.model, data=args.folder, crops=args.crops, batch_size=args.batch,
                             num_workers=args.workers, head_dims=(args.hidden,), embed_dim=args.embed,
                             num_prototypes=args.prototypes, sinkhorn_iters=3, epsilon=0.05, temperature=0.1,
                             max_steps=10**6, backend="ddp", output_dir=args.tmp, export=False)
        cfg = validate(cfg, world)
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.schedule = build_schedule(cfg, world)
        self.par = parallel.setup(
            build_swav_model(cfg), backend="ddp", precision="fp32", syncbn_group_size=None, checkpointing="none",
            exclude_bn_bias=cfg.lars_exclude_bn_bias, init_seed=cfg.seed,
            optimizer_factory=lars_factory(cfg, self.schedule.lr_at(0)))
        self.stream = build_stream(cfg, rank, world, 0, cfg.batch_size * world)
        self.it = None
        self.step_no = 0

    def start(self) -> None:
        if self.it is None or self.cfg.num_workers:  # workers: a fresh loader per block (none idle-prefetching)
            if self.it is not None:
                self.stream.close()
            self.it = iter(self.stream)

    def stop(self) -> None:
        if self.cfg.num_workers:
            self.stream.close()
            self.it = None

    def step(self) -> tuple[dict[str, float], float]:
        from phases import timed_step  # benchmarks/phases.py: swav_step, timed per Parallel call

        from bigseer.train_log import step_stats  # the engine's per-step loss/memory/skip all-gather

        t0 = time.perf_counter()
        batch = next(self.it)
        t1 = time.perf_counter()
        loss, _, t = timed_step(self.par, batch.crops, lr=self.schedule.lr_at(self.step_no))
        t2 = time.perf_counter()
        loss_value, _, _ = step_stats(loss.detach(), batch.skipped)
        t3 = time.perf_counter()
        self.step_no += 1
        optimizer = t2 - t1 - t["forward"] - t["backward"]  # set_lr, step, prototype normalisation, zero_grad
        return dict(zip(PHASES, (t1 - t0, t["forward"], t["backward"], optimizer, t3 - t2))), loss_value

    def close(self) -> None:
        self.stream.close()


# ------------------------------------------------------------------------------------------------ worker
def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    t0 = time.perf_counter()
    names = [v for v in VARIANTS if v in args.variants.split(",")]
    variants = {}
    for name in names:
        if name == "bigseer":
            variants[name] = BigseerVariant(args, rank, world)
        else:
            variants[name] = BaselineVariant(args, rank, world, grouped=name == "baseline-grouped")
    build_s = time.perf_counter() - t0
    global_batch = args.batch * world
    blocks = []  # one entry per (repeat, variant)
    for rep in range(args.repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]  # rotated per repeat
        for name in order:
            v = variants[name]
            v.start()
            for _ in range(args.warmup):
                v.step()
            dist.barrier()
            phases, losses = [], []
            tb = time.perf_counter()
            for _ in range(args.steps):
                ph, loss = v.step()
                phases.append(ph)
                losses.append(loss)
            dist.barrier()
            wall = time.perf_counter() - tb
            v.stop()
            # phase sums of this rank over the block; averaged over ranks below
            sums = torch.tensor([sum(p[k] for p in phases) for k in PHASES], dtype=torch.float64)
            dist.all_reduce(sums)
            sums /= world
            walls = torch.tensor([wall], dtype=torch.float64)
            dist.all_reduce(walls, op=dist.ReduceOp.MAX)
            blocks.append({"repeat": rep, "variant": name, "wall_s": float(walls), "steps": args.steps,
                           "img_per_s": global_batch * args.steps / float(walls),
                           "phase_s_per_step": {k: float(s) / args.steps for k, s in zip(PHASES, sums.tolist())},
                           "losses": losses, "load1": os.getloadavg()[0]})
            if rank == 0:
                b = blocks[-1]
                print(f"  repeat {rep} {name:8s}: {b['img_per_s']:6.2f} img/s  " + "  ".join(
                    f"{k} {b['phase_s_per_step'][k]:.3f}" for k in PHASES) + f"  loss {losses[-1]:.3f}"
                      f"  load {b['load1']:.2f}", flush=True)
    for v in variants.values():
        v.close()
    engine = None
    if args.engine_steps:
        engine = engine_check(args, rank, world)
    if rank == 0:
        with open(args.result, "w") as f:
            json.dump({"blocks": blocks, "build_s": build_s, "world": world, "engine": engine,
                       "torch": torch.__version__}, f)
    dist.barrier()
    dist.destroy_process_group()


def engine_check(args: argparse.Namespace, rank: int, world: int) -> dict | None:
    """``bigseer.engine.pretrain`` itself for a few steps on the same settings: its logged img/s per step
    (global batch / step time incl. data) next to the benchmark loop's, as a check that the loop is the engine's."""
    from bigseer.config import PretrainConfig
    from bigseer.engine import pretrain

    out = os.path.join(args.tmp, "engine")
    cfg = PretrainConfig(model=args.model, data=args.folder, crops=args.crops, batch_size=args.batch,
                         num_workers=args.workers, head_dims=(args.hidden,), embed_dim=args.embed,
                         num_prototypes=args.prototypes, sinkhorn_iters=3, epsilon=0.05, temperature=0.1,
                         max_steps=args.engine_steps + args.warmup, warmup_steps=0, backend="ddp", output_dir=out,
                         export=False, async_checkpoint=False)
    pretrain(cfg)
    if rank != 0:
        return None
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rates = [r["img_per_s"] for r in rows if "img_per_s" in r][args.warmup:]
    return {"img_per_s": rates, "load1": os.getloadavg()[0]}


# -------------------------------------------------------------------------------------------- launcher
def median_ratio(blocks: list[dict], num: str, den: str) -> tuple[float, float, float, list[float]]:
    by = {(b["repeat"], b["variant"]): b for b in blocks}
    reps = sorted({b["repeat"] for b in blocks})
    ratios = [by[(r, num)]["img_per_s"] / by[(r, den)]["img_per_s"] for r in reps]
    return statistics.median(ratios), min(ratios), max(ratios), ratios


def report(args: argparse.Namespace, res: dict, before: str, after: str, mb: float, size: tuple[int, int],
           folder: str) -> str:
    blocks = res["blocks"]
    names = [v for v in VARIANTS if any(b["variant"] == v for b in blocks)]
    per = {v: [b for b in blocks if b["variant"] == v] for v in names}
    rate = {v: statistics.median(b["img_per_s"] for b in per[v]) for v in names}
    gb = args.batch * res["world"]
    lines = [
        "## One full SwAV pretraining step, 2 ranks: bigseer vs timm + lightly + torch DDP + torchvision (issue 15 item 5)",
        "",
        "Command (repo root, 2-core CPU machine shared with other engineers):", "",
        "    .venv/bin/python benchmarks/bench_step.py " + " ".join(sys.argv[1:]), "",
        (f"Setup: {res['world']} ranks (torchrun, gloo), {args.threads} intra-op thread(s) per rank, DataLoader workers "
         f"{args.workers} per rank; model {args.model} (timm `{timm_name(args.model)}`), head {args.hidden}-{args.embed}, "
         f"{args.prototypes} prototypes, crops {args.crops}, batch {args.batch} per rank (global {gb}), fp32, LARS; "
         f"data: {args.images} generated camera-like JPEGs {size[0]}x{size[1]} (mean {mb:.1f} MB) in `{folder}`."),
        (f"Per repeat and variant: {args.warmup} untimed + {args.steps} timed steps; {args.repeats} repeats, variants "
         f"interleaved, order rotated per repeat; torch {res['torch']}; all variants built in {res['build_s']:.1f} s."),
        f"`uptime` before: `{before}`", f"`uptime` after: `{after}`", "",
        "| variant | img/s, median of repeats | bigseer / this, median of per-repeat ratios (range) |",
        "|---|---:|---|",
    ]
    for v in names:
        if v == "bigseer":
            cell = ""
        else:
            med, lo, hi, _ = median_ratio(blocks, "bigseer", v)
            cell = f"**{med:.2f}x** ({lo:.2f}-{hi:.2f})" if v == "baseline" else f"{med:.2f}x ({lo:.2f}-{hi:.2f})"
        lines.append(f"| `{v}`: {LABELS[v]} | {rate[v]:.2f} | {cell} |")
    lines += ["", "Breakdown, seconds per step (each phase: mean over ranks, median over repeats):", "",
              "| phase | " + " | ".join(names) + " | baseline - bigseer |",
              "|---|" + "---:|" * (len(names) + 1)]
    tot = {v: 0.0 for v in names}
    for k in PHASES:
        m = {v: statistics.median(b["phase_s_per_step"][k] for b in per[v]) for v in names}
        for v in names:
            tot[v] += m[v]
        lines.append(f"| {k} | " + " | ".join(f"{m[v]:.3f}" for v in names) +
                     f" | {m['baseline'] - m['bigseer']:+.3f} |")
    wall = {v: statistics.median(b["wall_s"] / b["steps"] for b in per[v]) for v in names}
    lines += ["| sum of phases | " + " | ".join(f"{tot[v]:.3f}" for v in names) +
              f" | {tot['baseline'] - tot['bigseer']:+.3f} |",
              "| wall per step (block wall / steps) | " + " | ".join(f"{wall[v]:.3f}" for v in names) +
              f" | {wall['baseline'] - wall['bigseer']:+.3f} |", ""]
    if res.get("engine"):
        e = res["engine"]
        lines += [(f"Engine check (not interleaved; after the repeats, load {e['load1']:.2f}): `bigseer.engine.pretrain` "
                   f"on the same settings logged a median of {statistics.median(e['img_per_s']):.2f} img/s over "
                   f"{len(e['img_per_s'])} steps (its `img_per_s` = global batch / step time incl. data), vs "
                   f"{rate['bigseer']:.2f} for the benchmark's bigseer loop."), ""]
    lines += ["Per repeat:", "", "| repeat | variant | img/s | " + " | ".join(PHASES) + " | last loss | load (1 min) |",
              "|---|---|---:|" + "---:|" * len(PHASES) + "---:|---:|"]
    for b in blocks:
        lines.append(f"| {b['repeat']} | {b['variant']} | {b['img_per_s']:.2f} | " +
                     " | ".join(f"{b['phase_s_per_step'][k]:.3f}" for k in PHASES) +
                     f" | {b['losses'][-1]:.3f} | {b['load1']:.2f} |")
    ratios = median_ratio(blocks, "bigseer", "baseline")[3]
    lines += ["", "Per-repeat ratios bigseer/baseline: " + ", ".join(f"{r:.2f}" for r in ratios), ""]
    return "\n".join(lines)


def timm_name(model: str) -> str:
    from bigseer.models import TIMM_NAMES

    return TIMM_NAMES[model]


def make_images(root: str, count: int, size: tuple[int, int]) -> tuple[str, float]:
    # benchmarks/bench_data.py: camera-like JPEGs (smooth scene + noise, q90)
    from bench_data import make_jpegs

    folder = os.path.join(root, "images")
    have = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    if len(have) != count:  # make_jpegs draws its random scenes in order: generate the whole set afresh
        for f in have:
            os.remove(os.path.join(folder, f))
        make_jpegs(root, count, size)
    files = sorted(os.listdir(folder))
    mb = statistics.mean(os.path.getsize(os.path.join(folder, f)) for f in files) / 1e6
    return folder, mb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="regnety_800mf")
    ap.add_argument("--crops", default="2x128+4x64")
    ap.add_argument("--batch", type=int, default=8, help="images per rank")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--embed", type=int, default=128)
    ap.add_argument("--prototypes", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers per rank (both variants)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads per rank")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant and repeat")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per variant and repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--width", type=int, default=4000)
    ap.add_argument("--height", type=int, default=3000)
    ap.add_argument("--dir", default=None, help="image cache (default /tmp/bigseer-bench-step-WxH-N)")
    ap.add_argument("--engine_steps", type=int, default=4, help="also run bigseer.engine.pretrain this many steps")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset (bigseer and baseline "
                    "are required)")
    ap.add_argument("--out", default=None, help="write the markdown report here")
    # worker-only
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--imagefolder_root", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    try:
        import lightly  # noqa: F401 - the baseline's library (not a bigseer dependency)
    except ImportError:
        print("lightly is not installed: .venv/bin/python -m pip install --no-deps lightly==1.6.0", file=sys.stderr)
        return 1
    root = args.dir or f"/tmp/bigseer-bench-step-{args.width}x{args.height}-{args.images}"
    t0 = time.perf_counter()
    folder, mb = make_images(root, args.images, (args.width, args.height))
    print(f"data: {args.images} JPEGs {args.width}x{args.height} (mean {mb:.1f} MB) in {folder} "
          f"(ready in {time.perf_counter() - t0:.1f} s)", flush=True)
    before = uptime()
    print(before, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_step_") as tmp:
        result = os.path.join(tmp, "result.json")
        own = [f"--{k}={getattr(args, k)}" for k in ("model", "crops", "batch", "hidden", "embed", "prototypes",
                                                      "workers", "threads", "steps", "warmup", "repeats",
                                                      "engine_steps", "variants")]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
               os.path.abspath(__file__), *own, "--worker", "--folder", folder, "--imagefolder_root", root,
               "--tmp", tmp, "--result", result]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=ROOT)
        subprocess.run(cmd, check=True, env=env, cwd=ROOT)
        with open(result) as f:
            res = json.load(f)
    after = uptime()
    text = report(args, res, before, after, mb, (args.width, args.height), folder)
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
