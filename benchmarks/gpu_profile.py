"""The profile row of benchmarks/gpu_check.py: when the first throughput variant's MFU is below
``ctx.profile_below`` (or ``--profile``), ``torch.profiler`` over its steps: top 10 ops by self CUDA (CPU:
self CPU) time, top kernels, GPU busy share of the wall time, and a Chrome trace."""

from __future__ import annotations

import contextlib
import gzip
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from gpu_harness import Row, Skip, sync
from gpu_throughput import Ctx

MAX_TRACE_BYTES = 15 * 2**20  # the device tool brings back files up to 16 MiB


def _dev_us(e: Any) -> float:
    return float(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0)


def _is_kernel(e: Any) -> bool:
    return str(getattr(e, "device_type", "")).upper().endswith(("CUDA", "PRIVATEUSE1"))


def rank_ops(avg: list[Any], cuda: bool, steps: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float | None]:
    """(top 10 ops, top 5 kernels, GPU busy seconds or None) of the profiler's key averages."""
    if cuda:
        kernels = [e for e in avg if _is_kernel(e)]
        ops = [e for e in avg if not _is_kernel(e) and _dev_us(e) > 0] or kernels  # device time on kernels only
        key = _dev_us
        busy: float | None = sum(_dev_us(e) for e in (kernels or ops)) / 1e6
    else:
        ops, kernels, busy = list(avg), [], None

        def key(e: Any) -> float:
            return float(e.self_cpu_time_total)
    total = sum(key(e) for e in ops) or 1.0
    top = [{"op": e.key[:80], "ms_per_step": key(e) / 1e3 / steps, "share": key(e) / total,
            "calls_per_step": e.count / steps} for e in sorted(ops, key=key, reverse=True)[:10]]
    top_kernels = [{"kernel": e.key[:80], "ms_per_step": _dev_us(e) / 1e3 / steps}
                   for e in sorted(kernels, key=_dev_us, reverse=True)[:5]]
    return top, top_kernels, busy


def export_trace(prof: Any, out: str | None) -> str | None:
    """The Chrome trace gzipped to ``out/profile_trace.json.gz``; its name, or None (no out, or too large)."""
    if not out:
        return None
    with contextlib.suppress(Exception):
        raw = Path(tempfile.mkdtemp(prefix="gpu_check_trace_")) / "trace.json"
        prof.export_chrome_trace(str(raw))
        dest = Path(out) / "profile_trace.json.gz"
        with open(raw, "rb") as src, gzip.open(dest, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst)
        shutil.rmtree(raw.parent, ignore_errors=True)
        if dest.stat().st_size <= MAX_TRACE_BYTES:
            return dest.name
        dest.unlink()
    return None


def check_profile(ctx: Ctx) -> Row:
    """Profile the live first variant's steps when its MFU is below the threshold; skipped above it."""
    from torch.profiler import ProfilerActivity, profile

    live = ctx.shared.get("live")
    if live is None:
        raise Skip("the first throughput variant left no model to profile (it failed, was skipped or filtered out)")
    mfu = live["mfu"]
    if mfu is not None and mfu >= ctx.profile_below and not ctx.force_profile:
        raise Skip(f"MFU {mfu:.1%} >= {ctx.profile_below:.0%} (use --profile to force)")
    cuda, steps = ctx.device == "cuda", ctx.sizes.profile_steps
    sync(ctx.device)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(steps):
            live["step"]()
        sync(ctx.device)
    wall = time.perf_counter() - t0
    avg = prof.key_averages()
    top, top_kernels, busy = rank_ops(list(avg), cuda, steps)
    trace = export_trace(prof, ctx.out)
    with contextlib.suppress(Exception):
        print(avg.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=15), flush=True)
    ctx.profile = {"variant": live["variant"], "batch": live["batch"], "steps": steps, "wall_s": wall,
                   "gpu_busy_s": busy, "gpu_busy_share": busy / wall if busy is not None else None,
                   "top_ops": top, "top_kernels": top_kernels, "trace": trace, "mfu": mfu,
                   "time": "self CUDA" if cuda else "self CPU"}
    details = (f"{live['variant']} batch {live['batch']}, {steps} steps in {wall:.1f}s"
               + (f", GPU busy {busy / wall:.0%}" if busy is not None else "")
               + f"; top by {ctx.profile['time']} time: " + ", ".join(f"{t['op']} {t['share']:.0%}" for t in top[:4])
               + " (all 10 below)" + (f"; trace {trace}" if trace else ""))
    return Row("profile", numbers=ctx.profile, details=details)
