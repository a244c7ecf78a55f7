"""What ``--accumulate`` costs against the same global batch on more ranks (one SwAV step, CPU).

Variants (same model, head, crops, global batch G, synthetic crops drawn once, fixed LR, LARS):

  acc2    1 rank, ``accumulate=2``, micro-batch G/2 (``bigseer.trainer.accumulated_swav_step``)
  ranks2  2 ranks (torch.multiprocessing, gloo, DDP), batch G/2 each (``swav_step``): the named baseline,
          "the same global batch on 2 ranks" (the maths acc2 reproduces)
  full    1 rank, batch G, no accumulation (``swav_step``): BatchNorm over G instead of G/2, so other maths;
          the compute reference (same samples, one pass)
  acc4    1 rank, ``accumulate=4``, micro-batch G/4

Every variant is built with the engine's pieces: ``PretrainConfig`` -> ``validate`` -> ``build_swav_model`` ->
``bigseer.parallel.setup(backend="ddp", accumulate=N, optimizer_factory=lars_factory(...))``. The 2 rank
processes stay alive for the whole benchmark and block on a queue while the 1-rank variants run in the main
process (and vice versa), so the variants are interleaved (order rotated per repeat) without start-up costs.
Per block: ``--warmup`` untimed + ``--steps`` timed steps; wall per step (2 ranks: between barriers, the slower
rank) and CPU seconds per step (``getrusage(RUSAGE_SELF)`` of every process taking part, summed over ranks:
2 ranks use 2 cores). Medians over repeats; ratios are medians of per-repeat ratios.

FLOPs per step (``bigseer.perf.FlopMeter`` around the step's forward/backward, the engine's ``measure``): acc2
vs full, and the expected extra, the FLOPs of one no-grad trunk + head forward of the assignment crops' run at
batch G. A maths check: acc2 and ranks2 take one step from the same weights on the same samples; their losses and
updated weights are compared.

    .venv/bin/python benchmarks/bench_accumulate.py --out benchmarks/results/accumulate.md
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from report import emit, uptime  # noqa: E402  (benchmarks/report.py)

VARIANTS = ("acc2", "ranks2", "full", "acc4")
LABELS = {"acc2": "(a) 1 rank x accumulate 2 x batch {h}",
          "ranks2": "(b) 2 ranks x batch {h} (DDP, gloo)",
          "full": "(c) 1 rank x batch {g} (no accumulation)",
          "acc4": "(d) 1 rank x accumulate 4 x batch {q}"}


def self_cpu() -> float:
    """User + system CPU seconds of this process (all its threads; not its children)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_crops(args: argparse.Namespace) -> list[Any]:
    """The global batch's crops, one ``[n, G, 3, s, s]`` tensor per resolution (seeded: every process draws
    the same)."""
    import torch

    from bigseer.data.multicrop import parse_crops

    g = torch.Generator().manual_seed(1234)
    return [torch.randn(grp.count, args.global_batch, 3, grp.size, grp.size, generator=g)
            for grp in parse_crops(args.crops)]


def split(crops: list[Any], parts: int) -> list[list[Any]]:
    """The global batch as ``parts`` consecutive micro-batches (rank r / micro-batch m gets the m-th slice)."""
    b = crops[0].shape[1] // parts
    return [[c[:, m * b:(m + 1) * b].contiguous() for c in crops] for m in range(parts)]


class Variant:
    """One configuration built from the engine's pieces; ``step()`` runs the engine's step on its data."""

    def __init__(self, args: argparse.Namespace, batch: int, accumulate: int, world: int, data: list[list[Any]]):
        import torch

        from bigseer import parallel
        from bigseer.config import PretrainConfig, validate
        from bigseer.trainer import build_swav_model, lars_factory, peak_lr

        cfg = PretrainConfig(model=args.model, crops=args.crops, batch_size=batch, accumulate=accumulate,
                             max_steps=10**6, backend="ddp" if world > 1 else "none", output_dir="/tmp/unused",
                             export=False, seed=0)
        self.cfg = validate(cfg, world)
        torch.manual_seed(0)
        self.lr = peak_lr(self.cfg, world)  # the same for every variant: base_lr x G / 256
        self.par = parallel.setup(build_swav_model(self.cfg), backend="ddp", optimizer_factory=lars_factory(
            self.cfg, self.lr), init_seed=0, accumulate=accumulate)
        self.data = data  # this rank's micro-batches

    def step(self, measure: Any = None) -> float:
        from bigseer.trainer import accumulated_swav_step

        loss, _ = accumulated_swav_step(self.par, self.data, lr=self.lr, measure=measure)
        return float(loss.detach())

    def flat_params(self) -> Any:
        import torch

        return torch.cat([p.detach().reshape(-1) for p in self.par.unwrapped.parameters()])


def run_block(v: Variant, warmup: int, steps: int, barrier: Any = None) -> tuple[float, float]:
    """(wall s per step, this process's CPU s per step) over ``steps`` timed steps after ``warmup``."""
    for _ in range(warmup):
        v.step()
    if barrier is not None:
        barrier()
    t0, c0 = time.perf_counter(), self_cpu()
    for _ in range(steps):
        v.step()
    if barrier is not None:
        barrier()
    return (time.perf_counter() - t0) / steps, (self_cpu() - c0) / steps


# ---------------------------------------------------------------------------------------- 2-rank workers
def rank_worker(rank: int, args: argparse.Namespace, port: int, commands: Any, results: Any) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    mine = [split(make_crops(args), 2)[rank]]
    # maths check first: one step from the initial weights
    check = Variant(args, args.global_batch // 2, 1, 2, mine)
    loss = torch.tensor([check.step()])
    dist.all_reduce(loss)
    if rank == 0:
        results.put(("check", float(loss) / 2, check.flat_params()))
    del check
    v = Variant(args, args.global_batch // 2, 1, 2, mine)
    while True:
        cmd = commands[rank].get()
        if cmd is None:
            break
        wall, cpu = run_block(v, args.warmup, args.steps, barrier=dist.barrier)
        out = torch.tensor([wall, cpu], dtype=torch.float64)
        walls = torch.tensor([wall], dtype=torch.float64)
        dist.all_reduce(out)  # sums: cpu summed over ranks
        dist.all_reduce(walls, op=dist.ReduceOp.MAX)
        if rank == 0:
            results.put(("block", float(walls), float(out[1])))
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------- FLOPs
def flops(args: argparse.Namespace, whole: list[Any]) -> dict[str, float]:
    """FLOPs of one step of acc2 and full (FlopMeter around the step, as the engine counts them) and of the
    expected extra: a no-grad forward of the assignment crops' run (trunk + head) at batch G."""
    import torch

    from bigseer.perf import FlopMeter

    out = {}
    for name, parts, acc in (("acc2", 2, 2), ("full", 1, 1), ("acc4", 4, 4)):
        v = Variant(args, args.global_batch // parts, acc, 1, split(whole, parts))
        meter = FlopMeter(1.0)
        v.step(measure=meter.count())
        out[name] = meter.step_flops
    # expected extra: the scoring pass = the assignment crops' resolution runs forward, no grad, whole batch G
    v = Variant(args, args.global_batch, 1, 1, [whole])
    swav = v.par.unwrapped
    meter = FlopMeter(1.0)
    with torch.no_grad(), swav.scoring_pass(), meter.count():
        swav(whole)
    out["scoring_forward"] = meter.step_flops
    meter = FlopMeter(1.0)
    with torch.no_grad(), meter.count():
        swav.features(whole)
    out["trunk_forward_all_crops"] = meter.step_flops
    return out


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="regnety_tiny")
    ap.add_argument("--crops", default="2x64+4x32")
    ap.add_argument("--global_batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per block")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per block")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch
    import torch.multiprocessing as mp

    torch.set_num_threads(args.threads)
    before = uptime()
    print(before, flush=True)
    g = args.global_batch
    whole = make_crops(args)
    t_build = time.perf_counter()
    ctx = mp.get_context("spawn")
    commands, results = [ctx.Queue(), ctx.Queue()], ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=rank_worker, args=(r, args, port, commands, results)) for r in range(2)]
    for p in procs:
        p.start()
    # maths check, acc2 side, while the ranks build (untimed)
    check = Variant(args, g // 2, 2, 1, split(whole, 2))
    start_params = check.flat_params().clone()
    acc_loss = check.step()
    acc_params = check.flat_params()
    del check
    kind, rank_loss, rank_params = results.get()
    assert kind == "check"
    maths = {"loss_acc2": acc_loss, "loss_ranks2": rank_loss,
             "max_abs_param_diff": float((acc_params - rank_params).abs().max()),
             "max_abs_param": float(rank_params.abs().max()), "params": int(acc_params.numel()),
             "max_abs_update": float((acc_params - start_params).abs().max()),
             "changed": int((acc_params != start_params).sum())}
    print(f"maths check: {maths}", flush=True)
    local = {"acc2": Variant(args, g // 2, 2, 1, split(whole, 2)),
             "full": Variant(args, g, 1, 1, [whole]),
             "acc4": Variant(args, g // 4, 4, 1, split(whole, 4))}
    build_s = time.perf_counter() - t_build
    blocks: list[dict[str, Any]] = []
    for rep in range(args.repeats):
        order = list(VARIANTS[rep % 4:] + VARIANTS[:rep % 4])
        for name in order:
            if name == "ranks2":
                for q in commands:
                    q.put("run")
                kind, wall, cpu = results.get()
                assert kind == "block"
            else:
                wall, cpu = run_block(local[name], args.warmup, args.steps)
            blocks.append({"repeat": rep, "variant": name, "wall": wall, "cpu": cpu, "load1": os.getloadavg()[0]})
            print(f"  repeat {rep} {name:7s} wall {wall:.3f} s/step  cpu {cpu:.3f} s/step  "
                  f"load {blocks[-1]['load1']:.2f}", flush=True)
    for q in commands:
        q.put(None)
    for p in procs:
        p.join()
    fl = flops(args, whole)
    after = uptime()
    text = report(args, blocks, fl, maths, before, after, build_s, torch.__version__)
    emit(text, args.out)
    return 0


def report(args: argparse.Namespace, blocks: list[dict[str, Any]], fl: dict[str, float], maths: dict[str, Any],
           before: str, after: str, build_s: float, torch_version: str) -> str:
    g = args.global_batch
    by = {(b["repeat"], b["variant"]): b for b in blocks}
    reps = sorted({b["repeat"] for b in blocks})

    def med(name: str, key: str) -> float:
        return statistics.median(by[(r, name)][key] for r in reps)

    def ratio(num: str, den: str, key: str) -> tuple[float, float, float]:
        rs = [by[(r, num)][key] / by[(r, den)][key] for r in reps]
        return statistics.median(rs), min(rs), max(rs)

    def cell(num: str, den: str, key: str) -> str:
        if num == den:
            return "1 (baseline)"
        m, lo, hi = ratio(num, den, key)
        return f"{m:.2f}x ({lo:.2f}-{hi:.2f})"

    labels = {k: v.format(g=g, h=g // 2, q=g // 4) for k, v in LABELS.items()}
    cmd = ".venv/bin/python benchmarks/bench_accumulate.py " + " ".join(sys.argv[1:])
    lines = [
        "## `--accumulate` vs the same global batch on more ranks (one SwAV step, CPU)", "",
        "Command (repo root; 2-core CPU machine shared with other engineers' tests and benchmarks):", "",
        f"    {cmd}", "",
        f"`uptime` before: `{before}`  ", f"`uptime` after: `{after}`", "",
        (f"Setup: {args.model}, crops {args.crops}, global batch {g}, PretrainConfig defaults for the head "
         f"(256-64, 256 prototypes, 3 Sinkhorn iterations, crops 0 and 1 assign), fp32, LARS at the linear-scaled "
         f"peak LR, {args.threads} torch thread per process; synthetic crops drawn once (no data loading: the "
         f"step alone). Per block {args.warmup} untimed + {args.steps} timed steps; {args.repeats} repeats, "
         f"variants interleaved, order rotated per repeat; torch {torch_version}; built in {build_s:.1f} s. "
         "Wall = seconds per step (2 ranks: the slower rank, between barriers); CPU = CPU seconds per step of all "
         "processes taking part (2 ranks: summed over both), i.e. the compute bill; per sample = CPU / G."), "",
        "| variant | wall s/step | CPU s/step | CPU ms/sample | wall vs (b) | CPU vs (b) | wall vs (c) | CPU vs (c) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in VARIANTS:
        lines.append(f"| {labels[v]} | {med(v, 'wall'):.3f} | {med(v, 'cpu'):.3f} | {1000 * med(v, 'cpu') / g:.1f} | "
                     f"{cell(v, 'ranks2', 'wall')} | {cell(v, 'ranks2', 'cpu')} | {cell(v, 'full', 'wall')} | "
                     f"{cell(v, 'full', 'cpu')} |")
    extra = fl["acc2"] - fl["full"]
    extra4 = fl["acc4"] - fl["full"]
    lines += [
        "", "Ratios: medians of per-repeat ratios (range); > 1 = more time / more CPU than the column's baseline.", "",
        "FLOPs per optimizer step (`bigseer.perf.FlopMeter` around the step's forward + backward, as the engine "
        "counts them; `torch.utils.flop_counter`, so convolutions and matmuls):", "",
        "| what | GFLOP | vs (c) |", "|---|---:|---:|",
        f"| (c) 1 rank x batch {g}, no accumulation | {fl['full'] / 1e9:.3f} | 1 |",
        f"| (a) accumulate 2 x batch {g // 2} | {fl['acc2'] / 1e9:.3f} | {fl['acc2'] / fl['full']:.3f}x |",
        f"| (d) accumulate 4 x batch {g // 4} | {fl['acc4'] / 1e9:.3f} | {fl['acc4'] / fl['full']:.3f}x |",
        f"| (a) - (c): the scoring pass, measured | {extra / 1e9:.3f} | {extra / fl['full']:.3f} |",
        f"| (d) - (c) | {extra4 / 1e9:.3f} | {extra4 / fl['full']:.3f} |",
        f"| expected extra: no-grad forward of the assignment crops' run + head at batch {g} (inside "
        f"`scoring_pass`) | {fl['scoring_forward'] / 1e9:.3f} | {fl['scoring_forward'] / fl['full']:.3f} |",
        f"| for scale: no-grad trunk forward of all crops at batch {g} | {fl['trunk_forward_all_crops'] / 1e9:.3f} | "
        f"{fl['trunk_forward_all_crops'] / fl['full']:.3f} |", "",
        (f"Maths check (one step from the same initial weights on the same {g} samples): loss (a) "
         f"{maths['loss_acc2']:.6f} vs (b) {maths['loss_ranks2']:.6f} (mean over ranks); largest difference of the "
         f"{maths['params']} weights after the step {maths['max_abs_param_diff']:.2e} (the step changed "
         f"{maths['changed']} of them, by up to {maths['max_abs_update']:.2e}; largest weight "
         f"{maths['max_abs_param']:.2f})."), "",
        "Per repeat:", "", "| repeat | variant | wall s/step | CPU s/step | load (1 min) |", "|---|---|---:|---:|---:|",
    ]
    for b in blocks:
        lines.append(f"| {b['repeat']} | {b['variant']} | {b['wall']:.3f} | {b['cpu']:.3f} | {b['load1']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
