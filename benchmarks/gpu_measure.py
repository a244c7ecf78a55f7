"""One throughput row of benchmarks/gpu_check.py: build the variant, find its batch, count its FLOPs, time its
steps, and report images/s, MFU (``bigseer.perf``) and peak memory beside ``bigseer.plan``'s plan."""

from __future__ import annotations

import math
import time
from typing import Any

import gpu_dynamo
from gpu_harness import Row, sync
from gpu_throughput import Bench, Ctx, Variant, peak_tflops, probe_batch, time_steps


def _choose_batch(ctx: Ctx, v: Variant, bench: Bench, budget_s: float,
                  notes: list[str]) -> tuple[int, list[dict[str, Any]]]:
    """``--batch``, else the batch an earlier variant of this model probed, else a probe (probe variants)."""
    import torch

    s, batches = ctx.sizes, ctx.shared.setdefault("batch", {})
    batch = ctx.batch or (None if v.probe else batches.get(v.model))
    if batch is None and v.mode == "compile":  # probing would recompile every block at every batch size
        batch = max(s.start_batch, s.max_batch // 4)
        notes.append(f"batch {batch} not probed (compile; no eager probe of {v.model} ran; --batch sets it)")
    if batch is not None:
        return batch, []
    mem_total = float(torch.cuda.mem_get_info()[1]) if ctx.device == "cuda" else None
    batch, trials, why, oom = probe_batch(bench.timed, s.start_batch, s.max_batch, mem_total, s.max_step_s,
                                          min(s.probe_s, 0.4 * budget_s))
    notes.append(f"probe {'/'.join(str(t['batch']) + ('!' if t.get('oom') else '') for t in trials)}: {why}")
    if oom:  # an OOM inside FSDP2's backward can leave its state half-way: start from a fresh model
        bench.build()
    batches[v.model] = batch
    return batch, trials


def _flops(ctx: Ctx, v: Variant, bench: Bench, batch: int, notes: list[str]) -> tuple[float, float]:
    """(step, forward) FLOPs at this batch, counted once per model/batch on an eager step where one ran."""
    flops = ctx.shared.setdefault("flops", {})
    key = (v.model, ctx.sizes.crops, batch)
    if key not in flops:
        if v.mode == "compile":
            notes.append("FLOPs counted under compile")
        flops[key] = bench.count_flops(batch)
    return flops[key]


def _memory(ctx: Ctx, v: Variant, batch: int) -> dict[str, Any]:
    """CUDA peak and total memory, memory outside PyTorch's allocator, and bigseer.plan's plan of this run."""
    import torch

    from bigseer.plan import plan_memory

    s = ctx.sizes
    plan = plan_memory(v.model, world_size=1, backend="fsdp", precision="bf16", batch_per_gpu=batch, crops=s.crops,
                       checkpointing="all", head_dims=(*s.head_dims, s.embed), prototypes=s.prototypes)
    out: dict[str, Any] = {"plan_gib": plan.total / 2**30, "max_memory_gib": None, "memory_total_gib": None,
                           "non_torch_gib": None}
    if ctx.device == "cuda":
        free_b, total_b = torch.cuda.mem_get_info()
        # CUDA context, NCCL, cuBLAS/cuDNN workspaces: the runtime term bigseer.plan leaves out on GPUs
        out.update(max_memory_gib=torch.cuda.max_memory_allocated() / 2**30, memory_total_gib=total_b / 2**30,
                   non_torch_gib=(total_b - free_b - torch.cuda.memory_reserved()) / 2**30)
    return out


def _result(ctx: Ctx, v: Variant, bench: Bench, batch: int, times: list[float], flops: tuple[float, float],
            peak: float) -> dict[str, Any]:
    import torch

    from bigseer.perf import FlopMeter

    step_flops, fwd_flops = flops
    dt = sum(times) / len(times)
    meter = FlopMeter(peak)
    meter.step_flops = step_flops
    m = meter.metrics(dt)
    gpu = torch.cuda.get_device_name() if ctx.device == "cuda" else "cpu"
    spec = peak_tflops(gpu) if ctx.device == "cuda" else None
    return {"variant": v.name, "model": v.model, "mode": v.mode, "channels_last": v.channels_last,
            "params": bench.n_params, "batch": batch, "crops": ctx.sizes.crops, "timed_steps": len(times),
            "step_s": dt, "step_s_min": min(times), "step_s_max": max(times), "images_per_s": batch / dt,
            "flops_per_step": step_flops, "fwd_flops": fwd_flops, "achieved_tflops": m["tflops"], "mfu": m["mfu"],
            "mfu_model": 3 * fwd_flops / dt / peak, "mfu_spec": step_flops / dt / (spec * 1e12) if spec else None,
            "peak_tflops_measured": peak / 1e12, "peak_tflops_spec": spec, "gpu": gpu, **_memory(ctx, v, batch)}


def describe(res: dict[str, Any], ctx: Ctx) -> str:
    """The row's details: model, batch, img/s, step time, FLOPs, MFU, memory, timings, notes."""
    s, spec, mem = ctx.sizes, res["peak_tflops_spec"], res["max_memory_gib"]
    times = f"{res['step_s_min'] * 1e3:.0f}-{res['step_s_max'] * 1e3:.0f}"
    parts = [f"{res['model']} ({res['params'] / 1e6:.4g}M params, head {list(s.head_dims)}x{s.prototypes}) FSDP2 bf16 "
             f"ckpt-all LARS, crops {s.crops}, batch {res['batch']}: {res['images_per_s']:.1f} img/s, "
             f"{res['step_s'] * 1e3:.0f} ms/step ({res['timed_steps']} steps, {times}), "
             f"{res['flops_per_step'] / 1e12:.3g} TFLOP/step counted ({res['fwd_flops'] / 1e12:.3g} fwd), "
             f"{res['achieved_tflops']:.0f} TFLOP/s; MFU {res['mfu']:.1%} of measured "
             f"{res['peak_tflops_measured']:.0f} (model FLOPs {res['mfu_model']:.1%})"
             + (f", {res['mfu_spec']:.1%} of spec {spec:.0f}" if spec else "")]
    if mem is not None:
        parts.append(f"max mem {mem:.1f}/{res['memory_total_gib']:.0f} GiB (plan {res['plan_gib']:.1f})")
    parts.append(f"build {res['build_s']:.0f}s, warm-up {res['warmup_s']:.0f}s")
    if "dynamo" in res:
        parts.append(gpu_dynamo.describe(res["dynamo"]))
    return "; ".join(parts + res["notes"])


def measure(ctx: Ctx, v: Variant, budget_s: float, keep_live: bool) -> Row:
    """The variant's row; ``keep_live`` leaves its model in ``ctx.shared["live"]`` for the profile row."""
    import torch

    from bigseer.perf import measured_peak_flops

    deadline = time.perf_counter() + budget_s
    if ctx.device == "cuda":
        torch.backends.cudnn.benchmark = True
    if "peak_flops" not in ctx.shared:
        ctx.shared["peak_flops"] = measured_peak_flops(ctx.device, torch.bfloat16, n=ctx.sizes.peak_n)
    watch = gpu_dynamo.DynamoWatch(ctx.compile_backend) if v.mode == "compile" else None
    bench: Bench | None = None
    notes: list[str] = []

    def teardown() -> None:
        if watch is not None:
            watch.close()
        if bench is not None:
            bench.close()

    try:
        t0 = time.perf_counter()
        bench = Bench(ctx, v)
        build_s = time.perf_counter() - t0
        batch, trials = _choose_batch(ctx, v, bench, budget_s, notes)
        t0 = time.perf_counter()
        for _ in range(ctx.sizes.warmup + (v.mode == "compile")):
            bench.step(batch)
        sync(ctx.device)
        warm_s = time.perf_counter() - t0
        flops = _flops(ctx, v, bench, batch, notes)
        if ctx.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        s = ctx.sizes
        times, cut = time_steps(lambda: bench.timed(batch, reset_peak=False)[0], s.min_steps, s.max_steps, s.time_s,
                                deadline)
        if cut:
            notes.append(f"timing stopped after {len(times)} steps (time limit)")
        loss = float(bench.step(batch).detach().float())
        res = {**_result(ctx, v, bench, batch, times, flops, ctx.shared["peak_flops"]), "loss": loss,
               "build_s": build_s, "warmup_s": warm_s, "probe": trials, "notes": notes}
        if watch is not None:
            res["dynamo"] = watch.result()
        ctx.throughput.append(res)
        if keep_live:
            ctx.shared["live"] = {"step": lambda: bench.step(batch), "mfu": res["mfu"], "variant": v.name,
                                  "batch": batch, "teardown": teardown, "step_s": res["step_s"]}
    finally:
        if "live" not in ctx.shared or ctx.shared["live"]["teardown"] is not teardown:
            teardown()
    row = Row(v.name, numbers=res, details=describe(res, ctx))
    if not (math.isfinite(loss) and res["images_per_s"] > 0 and res["flops_per_step"] > 0):
        row.status = f"FAIL: loss {loss}, img/s {res['images_per_s']}, flops {res['flops_per_step']}"
    return row
