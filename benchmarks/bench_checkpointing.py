"""Activation checkpointing: memory cut and step-time cost of ``checkpointing="all"`` vs ``"none"`` (baseline).

One process, a real SwAV step (``bigseer.trainer``: ``build_swav_model`` -> ``bigseer.parallel.setup`` (one
process: the plain model) with the engine's LARS (``lars_factory``) -> ``swav_step``: forward, backward, optimizer
step, prototype normalisation, zero_grad) on random multi-crop batches, on a model and input where activations
dominate. The goal is judged on the **step's peak memory**; measured per mode,
each mode in a fresh spawned process (neither inherits the other's allocator state), after one warm-up
step (so the momentum buffers exist and one-time allocations are done):

- peak RSS growth of one full step (``swav_step``), and of its forward + backward alone (VmHWM read when
  the backward returns, through ``swav_step``'s ``measure``): VmHWM minus the RSS
  just before the step, with ``MALLOC_MMAP_THRESHOLD_`` (``--mmap-threshold``) so RSS follows the live
  tensors. Includes everything the step allocates: saved activations, the block being recomputed,
  activation gradients, parameter gradients, oneDNN scratch;
- torch profiler memory (``profile_memory=True``, the profiler's memory timeline): the peak of live CPU
  tensor bytes during another full step, minus the live bytes at its start (parameters, momentum, input),
  i.e. the allocator's view of the same peak growth without glibc / oneDNN scratch, and its split by the
  profiler's categories at the peak;
- saved for backward (secondary, what checkpointing targets directly): bytes of the unique storages
  autograd saves in the forward, counted by a ``saved_tensors_hooks`` pack hook (parameters excluded) that
  counts from ``swav_step``'s forward call to its backward call (``benchmarks/phases.py``);
- step time: median of ``--repeats`` steps per mode, modes interleaved (order alternating), after one
  warm-up step each, in this process; the ratio is the median of per-repeat ratios;
- the planner's figures (``bigseer.plan.plan_memory``) for the same run: its activations, and its step
  growth (everything but parameters, optimizer state and buffers: activations + gradients + backward
  temporaries) against the measured peak growth.

    .venv/bin/python benchmarks/bench_checkpointing.py --model regnety_800mf --batch 8 --crops 2x160,4x64 \
        --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
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
    from bigseer.trainer import build_swav_model, lars_factory

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = PretrainConfig(model=model, head_dims=tuple(head[:-1]), embed_dim=head[-1], num_prototypes=prototypes)
    return parallel.setup(build_swav_model(cfg), backend="ddp", checkpointing=mode,
                          optimizer_factory=lars_factory(cfg, lr=0.01))


def make_crops(crops: list[tuple[int, int]], batch: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, batch, 3, s, s, generator=g) for n, s in crops]


def step(p: object, x: list[torch.Tensor], measure: object = None) -> float:
    """One engine step (``swav_step``); its wall time."""
    from bigseer.trainer import swav_step

    t0 = time.perf_counter()
    swav_step(p, x, measure=measure)
    return time.perf_counter() - t0


def saved_bytes(p: object, x: list[torch.Tensor]) -> int:
    """Unique storage bytes autograd saves for backward in the forward of one full step (parameters excluded;
    tensors the backward's recomputation saves are not counted)."""
    from phases import probed_step  # benchmarks/phases.py

    model = p.unwrapped  # type: ignore[attr-defined]
    params = {q.untyped_storage().data_ptr() for q in model.parameters()}
    seen: dict[int, int] = {}
    counting = [False]

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if counting[0] and s.data_ptr() not in params and s.nbytes():
            seen[s.data_ptr()] = s.nbytes()
        return t

    def on(call: str | None) -> None:  # count from the forward call to the backward call
        if call in ("forward", "backward"):
            counting[0] = call == "forward"

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        probed_step(p, x, on)
    return sum(seen.values())


@contextlib.contextmanager
def hwm_growth(base_kib: int, out: dict, key: str):  # type: ignore[no-untyped-def]
    """``out[key]`` = peak RSS growth (bytes) over ``base_kib`` when the block exits."""
    yield
    out[key] = (status_kib("VmHWM") - base_kib) * 1024


def _mem_child(args: tuple) -> dict:
    """Peak memory of one full step in a fresh process (see the module doc): RSS, then the profiler."""
    import gc

    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX, MemoryProfileTimeline

    model, mode, head, prototypes, threads, crops, batch = args
    p = build(model, mode, head, prototypes, threads)
    step(p, make_crops(crops, batch, 0))  # warm-up: momentum buffers, one-time allocations
    out: dict = {}
    for key, seed in (("rss_fwd_bwd", 1), ("rss_step", 2)):
        x = make_crops(crops, batch, seed)
        gc.collect()
        base = status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := current RSS
        if key == "rss_fwd_bwd":  # read when swav_step's backward returns (its measure block exits)
            step(p, x, measure=hwm_growth(base, out, key))
        else:
            step(p, x)
            out[key] = (status_kib("VmHWM") - base) * 1024
    x = make_crops(crops, batch, 3)
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step(p, x)
    timeline = MemoryProfileTimeline(prof._memory_profile())
    _, sizes = timeline._coalesce_timeline(torch.device("cpu"))  # [time][category] live bytes
    totals = [sum(row) for row in sizes]
    at = max(range(len(totals)), key=totals.__getitem__)
    names = ["-"] + [c.name.lower() if c else "unknown" for c in sorted(_CATEGORY_TO_INDEX, key=_CATEGORY_TO_INDEX.get)]
    out["prof_peak"] = totals[at]
    out["prof_start"] = totals[0]
    out["prof_by_category"] = dict(zip(names, sizes[at])) if len(names) == len(sizes[at]) else {}
    model_ = p.unwrapped  # type: ignore[attr-defined]
    state = [v for st in p.optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]  # type: ignore[attr-defined]
    out["resident"] = sum(t.numel() * t.element_size() for t in list(model_.parameters()) + state
                          + list(model_.buffers()) + x)
    return out


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

    mem = {}
    ctx = mp.get_context("spawn")
    for mode in MODES:
        with ctx.Pool(1) as pool:
            mem[mode] = pool.apply(_mem_child, ((args.model, mode, head, args.prototypes, args.threads, crops,
                                                 args.batch),))
        m = mem[mode]
        print(f"{mode}: peak RSS growth of a full step {m['rss_step'] / MIB:.0f} MiB (forward+backward alone "
              f"{m['rss_fwd_bwd'] / MIB:.0f}); profiler: peak live tensors {m['prof_peak'] / MIB:.0f} MiB, at the "
              f"step's start {m['prof_start'] / MIB:.0f}, resident params+state+buffers+input "
              f"{m['resident'] / MIB:.0f}; at the peak by category (MiB): "
              f"{ {k: round(v / MIB) for k, v in m['prof_by_category'].items() if v} }", flush=True)

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
                            checkpointing=m, head_dims=head, prototypes=args.prototypes) for m in MODES}

    def growth(m: str) -> int:  # profiler: peak live tensor bytes minus what was live at the step's start
        return mem[m]["prof_peak"] - mem[m]["prof_start"]

    def plan_growth(m: str) -> int:
        pl = plans[m]
        return pl.total - pl.params - pl.optimizer - pl.buffers

    med = {m: statistics.median(times[m]) for m in MODES}
    ratio = {m: statistics.median(a / b for a, b in zip(times[m], times["none"])) for m in MODES}
    print(f"\n{args.model} SwAV (head {args.head}, {args.prototypes} prototypes), 1 process, {args.threads} threads, "
          f"batch {args.batch}, crops {args.crops}, fp32; step = swav_step (forward, backward, LARS step, prototype "
          f"normalisation, zero_grad); median of {args.repeats} interleaved steps; ratios vs none")
    print("| checkpointing | peak RSS growth, full step (MiB) | cut vs none | profiler: peak tensor growth, full step "
          "(MiB) | cut vs none | plan step growth (MiB) | plan err vs profiler | saved for backward (MiB) | cut vs none "
          "| plan activations (MiB) | step time (s, median) | vs none (median of per-repeat ratios) | all steps (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m in MODES:
        print(f"| {m} | {mem[m]['rss_step'] / MIB:.0f} | {mem['none']['rss_step'] / mem[m]['rss_step']:.2f}x | "
              f"{growth(m) / MIB:.0f} | {growth('none') / growth(m):.2f}x | {plan_growth(m) / MIB:.0f} | "
              f"{plan_growth(m) / growth(m) - 1:+.0%} | {saved[m] / MIB:.0f} | {saved['none'] / saved[m]:.2f}x | "
              f"{plans[m].activations / MIB:.0f} | {med[m]:.2f} | {ratio[m]:.2f}x | "
              f"{', '.join(f'{t:.2f}' for t in times[m])} |")


if __name__ == "__main__":
    main()
