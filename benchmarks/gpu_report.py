"""The report of benchmarks/gpu_check.py: the GPU tests' outcomes (pytest's JUnit XML), the rows, the throughput
table and the profile's top ops as markdown (``gpu_check.md``), everything as JSON (``gpu_check.json``)."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from gpu_harness import Row
from gpu_throughput import Ctx

VERSIONS = ("torchvision", "deepspeed", "fairscale", "simplejpeg", "safetensors", "numpy", "pillow")
_OUTCOMES = {"failure": "FAIL", "error": "ERROR", "skipped": "skipped"}


def _esc(s: Any) -> str:
    return str(s).replace("|", "/").replace("\n", " ")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def read_junit(path: str | None) -> list[dict[str, Any]] | None:
    """Each test case of a pytest ``--junitxml`` file: test, status (passed / FAIL: / ERROR: / skipped: why),
    seconds; None when there is no file (pytest was not run, or was stopped before writing it)."""
    if not path or not Path(path).is_file():
        return None
    cases = []
    for tc in ET.parse(path).getroot().iter("testcase"):
        status = "passed"
        for tag, word in _OUTCOMES.items():
            el = tc.find(tag)
            if el is not None:
                msg = (el.get("message") or "").strip().splitlines()
                status = word + (f": {msg[0][:200]}" if msg else "")
                break
        cases.append({"test": f"{tc.get('classname', '').rsplit('.', 1)[-1]}::{tc.get('name')}", "status": status,
                      "seconds": float(tc.get("time") or 0)})
    return cases


def tests_section(cases: list[dict[str, Any]] | None, path: str | None) -> str:
    """Markdown: the GPU tests' counts and one line per test (nothing when no XML was asked for)."""
    if not path:
        return ""
    if cases is None:
        return f"\n### Tests (pytest -m gpu tests/gpu): no JUnit XML at {path} (stopped before the end? see the log)\n"
    counts: dict[str, int] = {}
    for c in cases:
        word = c["status"].split(":")[0]
        counts[word] = counts.get(word, 0) + 1
    lines = ["", "### Tests (pytest -m gpu tests/gpu): " + ", ".join(f"{n} {w}" for w, n in sorted(counts.items())),
             "", "| test | status | s |", "| --- | --- | --- |"]
    lines += [f"| {_esc(c['test'])} | {_esc(c['status'])} | {c['seconds']:.1f} |" for c in cases]
    return "\n".join(lines) + "\n"


def table(rows: list[Row], header: str) -> str:
    lines = [header, "", "| row | status | details | s |", "| --- | --- | --- | --- |"]
    lines += [f"| {_esc(r.name)} | {_esc(r.status)} | {_esc(r.details)} | {r.seconds:.1f} |" for r in rows]
    return "\n".join(lines) + "\n"


def throughput_section(tp: list[dict[str, Any]]) -> list[str]:
    spec = next((r["peak_tflops_spec"] for r in tp if r["peak_tflops_spec"]), None)
    title = (f"### Throughput: SwAV training step, FSDP2 bf16, activation checkpointing, crops {tp[0]['crops']}; "
             f"MFU = counted step FLOPs / step time / peak (bigseer.perf; measured bf16 matmul peak "
             f"{tp[0]['peak_tflops_measured']:.0f} TFLOP/s" + (f", spec dense bf16 {spec:.0f}" if spec else "") + ")")
    columns = ["variant", "batch", "img/s", "ms/step", "TFLOP/step (fwd)", "TFLOP/s", "MFU measured peak",
               "MFU model FLOPs (3x fwd)", "MFU spec peak", "max mem GiB (bigseer plan)", "outside PyTorch GiB"]
    out = ["", title, "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for r in tp:
        mem = ("-" if r["max_memory_gib"] is None else f"{r['max_memory_gib']:.1f}") + f" ({r['plan_gib']:.1f})"
        other = "-" if r["non_torch_gib"] is None else f"{r['non_torch_gib']:.2f}"
        out.append(f"| {r['variant']} | {r['batch']} | {r['images_per_s']:.1f} | {r['step_s'] * 1e3:.0f} | "
                   f"{r['flops_per_step'] / 1e12:.3g} ({r['fwd_flops'] / 1e12:.3g}) | {r['achieved_tflops']:.1f} | "
                   f"{_pct(r['mfu'])} | {_pct(r['mfu_model'])} | {_pct(r['mfu_spec'])} | {mem} | {other} |")
    return out


def profile_section(p: dict[str, Any], below: float) -> list[str]:
    busy = f", GPU busy {p['gpu_busy_share']:.0%} of the wall time" if p["gpu_busy_share"] is not None else ""
    title = (f"### Profile: {p['variant']}, batch {p['batch']}, {p['steps']} step(s) in {p['wall_s']:.1f}s{busy} "
             f"(MFU {_pct(p['mfu'])}; profiled below {below:.0%} or with --profile); top 10 ops by {p['time']} time")
    out = ["", title, "", "| op | ms/step | share | calls/step |", "| --- | --- | --- | --- |"]
    out += [f"| {_esc(t['op'])} | {t['ms_per_step']:.1f} | {t['share']:.1%} | {t['calls_per_step']:.0f} |"
            for t in p["top_ops"]]
    if p["top_kernels"]:
        out += ["", "Top kernels: " + "; ".join(f"{_esc(k['kernel'])} {k['ms_per_step']:.1f} ms/step"
                                                for k in p["top_kernels"])]
    return out


def report(rows: list[Row], header: str, ctx: Ctx, tests_xml: str | None = None) -> str:
    """The whole markdown report."""
    out = (throughput_section(ctx.throughput) if ctx.throughput else []) \
        + (profile_section(ctx.profile, ctx.profile_below) if ctx.profile else [])
    return (table(rows, "## gpu_check report\n\n" + header) + tests_section(read_junit(tests_xml), tests_xml)
            + "\n".join(out) + ("\n" if out else ""))


def environment(device: str) -> dict[str, Any]:
    """Versions of bigseer, Python, torch and the packages the checks use; the GPU, CUDA, cuDNN, NCCL, driver."""
    import torch

    import bigseer

    env: dict[str, Any] = {"bigseer": bigseer.__version__, "python": sys.version.split()[0], "torch": torch.__version__}
    if device == "cuda":
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        env.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                   memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
        with contextlib.suppress(Exception):
            env["nccl"] = ".".join(str(x) for x in torch.cuda.nccl.version())
        with contextlib.suppress(Exception):
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=10,
                                           check=False).stdout.strip().splitlines()[0]
    for dist in VERSIONS:
        try:
            env[dist] = md.version(dist)
        except md.PackageNotFoundError:
            env[dist] = "missing"
    if os.environ.get("PYTORCH_CUDA_ALLOC_CONF"):
        env["PYTORCH_CUDA_ALLOC_CONF"] = os.environ["PYTORCH_CUDA_ALLOC_CONF"]
    return env


def header_line(env: dict[str, Any], device: str) -> str:
    if device == "cuda":
        head = (f"{env['gpu']} (cc {env['capability']}, {env['sms']} SMs, {env['memory_gib']} GiB, driver "
                f"{env.get('driver', '?')}), torch {env['torch']} (CUDA {env['cuda']}, cuDNN {env['cudnn']}, NCCL "
                f"{env.get('nccl', '?')})")
    else:
        head = f"CPU dry run, torch {env['torch']}"
    rest = ", ".join(f"{k} {env[k]}" for k in (*VERSIONS, "python"))
    alloc = f", PYTORCH_CUDA_ALLOC_CONF={env['PYTORCH_CUDA_ALLOC_CONF']}" if "PYTORCH_CUDA_ALLOC_CONF" in env else ""
    return f"bigseer {env['bigseer']} gpu_check on {head}; {rest}{alloc}; 1-rank process group"


def write(out: str | None, rows: list[Row], header: str, ctx: Ctx, env: dict[str, Any],
          tests_xml: str | None = None) -> None:
    """``out/gpu_check.md`` and ``out/gpu_check.json`` (atomically replaced); nothing without ``out``."""
    if not out:
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, "gpu_check.md").write_text(report(rows, header, ctx, tests_xml))
    data = {"header": header, "env": env, "tests": read_junit(tests_xml),
            "rows": [{"name": r.name, "status": r.status, "details": r.details, "seconds": r.seconds,
                      "numbers": r.numbers} for r in rows],
            "throughput": ctx.throughput, "profile": ctx.profile,
            "top_level_modules": sorted({m.split(".")[0] for m in list(sys.modules)})}
    tmp = Path(out, "gpu_check.json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(Path(out, "gpu_check.json"))
