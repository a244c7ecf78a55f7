"""``bigseer bench``: forward+backward images/s of a bigseer RegNetY trunk vs timm's, in one run.

The measuring code (:func:`benchmark_regnet`) is shared with ``benchmarks/bench_regnet.py``.
All variants start from the same weights and the same input. Every bigseer variant (eager,
channels_last, torch.compile, compile+channels_last) has timm's same variant beside it as its baseline.
Measurements are interleaved (timm X, bigseer X, timm Y, bigseer Y, ..., the order reversed every other
step), and ratios are medians of the per-step ratios (both models timed in the same round), so load on a
shared machine hits the pair alike.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from bigseer.errors import ConfigError


@dataclass
class BenchRow:
    """One measured variant. ``error`` is set (and timings are NaN) when the variant failed to run."""

    name: str
    images_per_s: float
    ms_per_step: float
    ratio_vs_timm: float  # median over steps of (timm eager time / this variant's time), same round
    max_abs_diff_out: float  # vs the bigseer eager output (timm eager is compared to it too)
    max_abs_diff_grad: float  # max over all parameter gradients, matched by state-dict name
    rel_diff_grad: float  # max over parameters of max|g - g_ref| / max|g_ref|
    rel_diff_grad_fp64: float  # the same against a float64 run of bigseer eager (fp32 rounding scale)
    error: str = ""
    baseline: str = ""  # timm's same variant (for a timm row: itself)
    ratio_vs_same: float = float("nan")  # median over steps of (baseline time / this variant's time)
    ratio_vs_same_range: tuple[float, float] = (float("nan"), float("nan"))  # min, max of those per-step ratios


@dataclass
class _Variant:
    name: str
    kind: str  # "eager" | "channels_last" | "compile" | "compile+channels_last"
    model: nn.Module
    step: Callable[[], tuple[torch.Tensor, nn.Module]]
    times: list[float]
    error: str = ""


def _validate(model: str, batch_size: int, image_size: int, steps: int, warmup: int) -> str:
    from bigseer.models import TIMM_NAMES

    if model not in TIMM_NAMES:
        raise ConfigError(f"bench --model {model!r}: needs a preset timm also has; choose one of: "
                          f"{', '.join(TIMM_NAMES)}")
    for field, value, low in (("batch_size", batch_size, 2), ("image_size", image_size, 32),
                              ("steps", steps, 1), ("warmup", warmup, 0)):
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"bench --{field}={value!r} is invalid: must be an integer >= {low}")
    return TIMM_NAMES[model]


def benchmark_regnet(model: str = "regnety_800mf", *, batch_size: int = 16, image_size: int = 224,
                     steps: int = 10, warmup: int = 2, channels_last: bool = True,
                     compile: bool = True, seed: int = 0,
                     log: Callable[[str], None] | None = None) -> list[BenchRow]:
    """Train-mode forward+backward throughput of bigseer's trunk vs timm's same-config RegNetY.

    Variants, each as a (timm, bigseer) pair: ``eager``; ``channels_last`` (with ``channels_last``);
    ``compile`` (with ``compile``); ``compile+channels_last`` (with both). Every bigseer variant is
    compared with timm's same variant (``ratio_vs_same``: median over the timed steps of the per-step
    ratio timm time / bigseer time, both timed in the same round) and every variant with timm eager
    (``ratio_vs_timm``, the same kind of median). Every model gets the same initial weights (bigseer's,
    non-zero last-BN gammas, loaded into timm with ``strict=True``) and the same input. Numerics: each
    variant's first step output and parameter gradients are compared with ``bigseer eager``'s. A variant
    that fails (e.g. torch.compile without a working C compiler) is reported with its error instead of
    aborting the run.
    """
    timm_name = _validate(model, batch_size, image_size, steps, warmup)  # before any heavy import/work
    import timm

    from bigseer.models import build_regnet

    say = log or (lambda _msg: None)
    torch.manual_seed(seed)
    ours = build_regnet(model, zero_init_last=False)
    with torch.no_grad():  # non-trivial BN affine params so all branches carry signal
        for m in ours.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    state = copy.deepcopy(ours.state_dict())
    theirs = timm.create_model(timm_name, num_classes=0)
    theirs.load_state_dict(state, strict=True)

    x = torch.randn(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    proj = torch.randn(batch_size, ours.num_features, generator=torch.Generator().manual_seed(seed + 1))

    def make(name: str, kind: str, base: nn.Module, cl: bool, comp: bool) -> _Variant:
        net = copy.deepcopy(base).train()
        net.load_state_dict(state, strict=True)
        inp = x.contiguous(memory_format=torch.channels_last) if cl else x.contiguous()
        if cl:
            net = net.to(memory_format=torch.channels_last)
        fn: Callable[[torch.Tensor], torch.Tensor] = torch.compile(net) if comp else net

        def step() -> tuple[torch.Tensor, nn.Module]:
            net.zero_grad(set_to_none=True)
            out = fn(inp)
            (out * proj).sum().backward()
            return out.detach(), net

        return _Variant(name, kind, net, step, [])

    kinds = [("eager", False, False)]
    if channels_last:
        kinds.append(("channels_last", True, False))
    if compile:
        kinds.append(("compile", False, True))
        if channels_last:
            kinds.append(("compile+channels_last", True, True))
    variants = [make(f"{who} {kind}", kind, base, cl, comp) for kind, cl, comp in kinds
                for who, base in (("timm", theirs), ("bigseer", ours))]

    # First step of every variant from identical weights: numerics (also compiles / warms up).
    first: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
    for v in variants:
        say(f"first step: {v.name}")
        try:
            t0 = time.perf_counter()
            out, net = v.step()
            grads = {n: p.grad.detach().clone() for n, p in net.named_parameters()}
            first[v.name] = (out.contiguous(), grads)
            say(f"  {time.perf_counter() - t0:.1f} s")
        except Exception as exc:  # report e.g. inductor/compiler failures honestly, keep the rest
            v.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            say(f"  failed: {v.error}")
    live = [v for v in variants if not v.error]
    for _ in range(warmup):
        for v in live:
            v.step()
    for i in range(steps):
        for v in (live if i % 2 == 0 else live[::-1]):  # alternate the order: no variant always first
            t0 = time.perf_counter()
            v.step()
            v.times.append(time.perf_counter() - t0)
        say(f"step {i + 1}/{steps}: " + ", ".join(f"{v.name} {v.times[-1] * 1e3:.0f} ms" for v in live))

    ref_out, ref_grads = first["bigseer eager"]
    say("float64 reference step")
    ref64 = copy.deepcopy(ours).double().train()
    ref64.load_state_dict(state, strict=True)
    (ref64(x.double()) * proj.double()).sum().backward()
    grads64 = {n: p.grad for n, p in ref64.named_parameters()}

    def rel_diff(grads: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
        return max(((grads[k].double() - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-30)).item()
                   for k in ref)

    nan = float("nan")

    def ratios(base: _Variant, v: _Variant) -> list[float]:
        """Per-step ratios base time / v time (both timed in the same round); empty if either failed."""
        return [] if base.error or v.error else [b / t for b, t in zip(base.times, v.times)]

    by_name = {v.name: v for v in variants}
    rows = []
    for v in variants:
        same = by_name[f"timm {v.kind}"]
        if v.error:
            rows.append(BenchRow(v.name, nan, nan, nan, nan, nan, nan, nan, v.error, baseline=same.name))
            continue
        med = statistics.median(v.times)
        out, grads = first[v.name]
        d_out = (out - ref_out).abs().max().item()
        d_grad = max((grads[k] - ref_grads[k]).abs().max().item() for k in ref_grads)
        vs_eager, vs_same = ratios(variants[0], v), ratios(same, v)
        rows.append(BenchRow(v.name, batch_size / med, med * 1e3,
                             statistics.median(vs_eager) if vs_eager else nan, d_out, d_grad,
                             rel_diff(grads, ref_grads), rel_diff(grads, grads64), baseline=same.name,
                             ratio_vs_same=statistics.median(vs_same) if vs_same else nan,
                             ratio_vs_same_range=(min(vs_same), max(vs_same)) if vs_same else (nan, nan)))
    return rows


def format_table(rows: list[BenchRow]) -> str:
    """A markdown table of :func:`benchmark_regnet` rows (errors listed below it). Ratios are medians of
    per-step ratios (baseline time / variant time, same round); "vs timm same variant" is the comparison
    each bigseer variant is judged on (compiled vs compiled, ...). Diffs are vs bigseer eager fp32's first
    step; the "vs fp64" column is vs a float64 run, i.e. the fp32 rounding scale."""
    header = ("| variant | images/s | ms/step (median) | vs timm eager | max abs diff out | max abs diff grad "
              "| max rel diff grad | max rel diff grad vs fp64 | vs timm same variant | per-step ratio min-max |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def x(v: float) -> str:
        return "-" if math.isnan(v) else f"{v:.2f}x"

    for r in rows:
        if r.error:
            lines.append(f"| {r.name} | failed | - | - | - | - | - | - | - | - |")
        else:
            lo, hi = r.ratio_vs_same_range
            rng = "-" if math.isnan(lo) else f"{lo:.2f}-{hi:.2f}"
            lines.append(f"| {r.name} | {r.images_per_s:.2f} | {r.ms_per_step:.0f} | {x(r.ratio_vs_timm)} "
                         f"| {r.max_abs_diff_out:.2e} | {r.max_abs_diff_grad:.2e} | {r.rel_diff_grad:.2e} "
                         f"| {r.rel_diff_grad_fp64:.2e} | {x(r.ratio_vs_same)} | {rng} |")
    lines += [f"\n{r.name} failed: {r.error}" for r in rows if r.error]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``bigseer bench``."""
    parser.add_argument("--model", default="regnety_800mf", help="a bigseer preset that timm also has")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant after the first")
    parser.add_argument("--channels_last", action="store_true",
                        help="also measure channels_last variants (timm's and bigseer's)")
    parser.add_argument("--compile", action="store_true",
                        help="also measure torch.compile variants (timm's and bigseer's)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--quiet", action="store_true", help="print only the table")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the table."""
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"bench --threads={args.threads} is invalid: must be an integer >= 1")
        torch.set_num_threads(args.threads)
    log = None if args.quiet else (lambda msg: print(msg, flush=True))
    rows = benchmark_regnet(args.model, batch_size=args.batch_size, image_size=args.image_size,
                            steps=args.steps, warmup=args.warmup, channels_last=args.channels_last,
                            compile=args.compile, log=log)
    print(f"{args.model}: train-mode forward+backward, batch {args.batch_size}, {args.image_size} px, "
          f"{args.steps} interleaved steps per variant, {torch.get_num_threads()} threads; ratios: median of "
          f"per-step ratios (baseline time / variant time, same round)")
    print(format_table(rows))
    return 0
