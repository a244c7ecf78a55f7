"""Activation checkpointing: memory cut and step-time cost of ``checkpointing="all"`` vs ``"none"`` (baseline).

One process, a real SwAV step (``build_swav_model`` -> ``bigseer.parallel.setup`` (one process: the plain
model) with SGD + momentum -> forward, backward, optimizer step) on random multi-crop batches, on a model
and input where activations dominate. Measured per mode:

- saved for backward: bytes of the unique storages autograd saves in the forward, counted by a
  ``saved_tensors_hooks`` pack hook (parameters excluded). Under non-reentrant checkpointing the hook sees
  what stays alive outside checkpointed blocks plus each block's saved input; the internals of a block are
  recomputed in the backward (one block at a time, not counted here). Exact and noise-free;
- peak RSS growth of one forward+backward (VmHWM minus the RSS just before it), each mode in a fresh
  spawned process so neither inherits the other's allocator state;
- step time: median of ``--repeats`` steps per mode, modes interleaved, after one warm-up step each;
- the planner's activation figure (``bigseer.plan.plan_memory``) for the same run.

    .venv/bin/python benchmarks/bench_checkpointing.py --model regnety_800mf --batch 16 --crops 2x160,4x64
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from memstat import add_mmap_threshold_arg, apply_mmap_threshold, status_kib  # benchmarks/memstat.py
import torch  # noqa: E402

from bigseer.plan import parse_crops, plan_memory  # noqa: E402

MODES = ("none", "all")
MIB = 2 ** 20


def build(model: str, mode: str, head: list[int], prototypes: int, threads: int) -> object:
    """A ``Parallel`` (one process) holding the SwAV model with checkpointing ``mode``."""
    from bigseer import parallel
    from bigseer.config import PretrainConfig
    from bigseer.engine import build_swav_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = PretrainConfig(model=model, head_dims=tuple(head[:-1]), embed_dim=head[-1], num_prototypes=prototypes)
    return parallel.setup(build_swav_model(cfg), backend="ddp", checkpointing=mode,
                          optimizer_factory=lambda g: torch.optim.SGD(g, lr=0.01, momentum=0.9))


def make_crops(crops: list[tuple[int, int]], batch: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, batch, 3, s, s, generator=g) for n, s in crops]


def step(p: object, x: list[torch.Tensor]) -> float:
    t0 = time.perf_counter()
    loss = p.forward(x)  # type: ignore[attr-defined]
    p.backward(loss)  # type: ignore[attr-defined]
    p.step()  # type: ignore[attr-defined]
    p.zero_grad()  # type: ignore[attr-defined]
    return time.perf_counter() - t0


def saved_bytes(p: object, x: list[torch.Tensor]) -> int:
    """Unique storage bytes autograd saves for backward in one forward (parameters excluded)."""
    model = p.unwrapped  # type: ignore[attr-defined]
    params = {q.untyped_storage().data_ptr() for q in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params and s.nbytes():
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = p.forward(x)  # type: ignore[attr-defined]
    total = sum(seen.values())
    p.backward(loss)  # type: ignore[attr-defined]
    p.zero_grad()  # type: ignore[attr-defined]
    return total


def _rss_child(args: tuple) -> int:
    model, mode, head, prototypes, threads, crops, batch = args
    p = build(model, mode, head, prototypes, threads)
    x = make_crops(crops, batch, 0)
    base = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := current RSS
    loss = p.forward(x)  # type: ignore[attr-defined]
    p.backward(loss)  # type: ignore[attr-defined]
    return (status_kib("VmHWM") - base) * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="regnety_800mf")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crops", default="2x160,4x64")
    ap.add_argument("--head", default="256,64", help="hidden dims then embedding dim")
    ap.add_argument("--prototypes", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    add_mmap_threshold_arg(ap)
    args = ap.parse_args()
    apply_mmap_threshold(args.mmap_threshold)
    crops = parse_crops(args.crops)
    head = [int(d) for d in args.head.split(",")]

    rss = {}
    ctx = mp.get_context("spawn")
    for mode in MODES:
        with ctx.Pool(1) as pool:
            rss[mode] = pool.apply(_rss_child, ((args.model, mode, head, args.prototypes, args.threads, crops,
                                                 args.batch),))
        print(f"{mode}: peak RSS growth of forward+backward {rss[mode] / MIB:.0f} MiB", flush=True)

    runs = {mode: build(args.model, mode, head, args.prototypes, args.threads) for mode in MODES}
    saved = {}
    for mode, p in runs.items():
        saved[mode] = saved_bytes(p, make_crops(crops, args.batch, 1))  # also the warm-up step
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(args.repeats):
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):  # interleaved, alternating order
            times[mode].append(step(runs[mode], make_crops(crops, args.batch, 2 + r)))
            print(f"repeat {r} {mode}: {times[mode][-1]:.2f} s", flush=True)
    plans = {m: plan_memory(args.model, world_size=1, backend="ddp", batch_per_gpu=args.batch, crops=crops,
                            checkpointing=m, head_dims=head, prototypes=args.prototypes).activations for m in MODES}

    med = {m: statistics.median(times[m]) for m in MODES}
    print(f"\n{args.model} SwAV (head {args.head}, {args.prototypes} prototypes), 1 process, {args.threads} threads, "
          f"batch {args.batch}, crops {args.crops}, fp32; median of {args.repeats} interleaved steps; ratios vs none")
    print("| checkpointing | saved for backward (MiB) | cut vs none | peak RSS growth fwd+bwd (MiB) | cut vs none |"
          " plan activations (MiB) | plan err | step time (s, median) | vs none | all steps (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m in MODES:
        print(f"| {m} | {saved[m] / MIB:.0f} | {saved['none'] / saved[m]:.2f}x | {rss[m] / MIB:.0f} | "
              f"{rss['none'] / rss[m]:.2f}x | {plans[m] / MIB:.0f} | {plans[m] / saved[m] - 1:+.0%} | {med[m]:.2f} | "
              f"{med[m] / med['none']:.2f}x | {', '.join(f'{t:.2f}' for t in times[m])} |")


if __name__ == "__main__":
    main()
