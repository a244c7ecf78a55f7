"""One-call GPU check of bigseer (project issue 16, after issue 5): backends, fp16 loss scaling, checkpoints
across backends, SyncBN, GPU JPEG decode, and images/s + MFU of a large-RegNetY SwAV step.

Runs in one process on one device with a 1-rank process group (nccl on CUDA, gloo on CPU), so the distributed
code paths are the ones taken. One row per check, each ``ok`` / ``FAIL: <error>`` / ``skipped: <reason>``:

- ``syncbn bigseer``: ``GroupSyncBatchNorm`` on the world group vs ``nn.BatchNorm2d`` (outputs, grads, running
  stats), as shipped and once more with its all-reduce forced through the backend. One GPU = world size 1: the
  2-process comparison against ``nn.SyncBatchNorm`` needs 2 GPUs and is not run.
- ``syncbn torch``: ``nn.SyncBatchNorm`` and torch's SyncBN autograd function (CUDA stats kernels + NCCL
  all-gather) vs ``nn.BatchNorm2d`` (CUDA only).
- ``fsdp bf16`` / ``fsdp fp16``: ``bigseer.parallel.setup(backend="fsdp")`` (FSDP2, meta-built) + LARS, SwAV
  steps; fp16 (GradScaler) then gets an injected overflow (loss x inf): skipped, weights kept, scale halved.
- ``deepspeed zero2 fp16``: ``ds_configs/zero2.json`` (fp16, dynamic loss scale, hysteresis 2) + LARS, steps,
  then two injected overflows: both skipped, weights kept, the loss scale moves down, the next step applies.
  On CPU bigseer falls back to bf16 (no loss scaler: no injection).
- ``fairscale fp16``: FairScale FSDP fp16 + ShardedGradScaler + LARS, steps + an injected overflow (CUDA only;
  on CPU a ddp fp16 stand-in, so that the next row's code runs in the dry run).
- ``fairscale checkpoint``: that model's ``state_pieces()`` saved with ``bigseer.checkpoint.save_checkpoint``,
  a step taken, loaded back (bitwise equal), loaded under fsdp (bitwise equal, same tensor names, loss scale),
  one fsdp step, then ``bigseer.export.export_checkpoint`` + ``load_pretrained`` (trunk bitwise equal).
- ``jpeg decode``: ``SampleRenderer(device="cuda")`` (nvjpeg + tensor augmentations) vs the CPU path
  (simplejpeg DCT-scaled decode) on generated 12 MP JPEGs, SEER's 6 crops: images/s each (one process),
  nvjpeg fallbacks counted, mean |diff| of the crops.
- ``throughput <model> <mode>``: one SwAV training step of regnety_128gf (then regnety_256gf if time is left),
  SEER head and crops 2x224+4x96, FSDP2 bf16, activation checkpointing, LARS; variants channels_last on/off and
  compile on/off; the batch is the largest a doubling probe fits (OOM-safe); FLOPs counted by
  ``torch.utils.flop_counter`` on a real step (with recompute: what the engine logs) and forward-only (model
  FLOPs = 3 x forward); MFU via ``bigseer.perf`` against the measured bf16 matmul peak, and against the GPU's
  spec dense bf16 peak (second column).
- ``profile``: when the first variant's MFU is below 35% (or ``--profile``), ``torch.profiler`` over its steps:
  top 10 ops by self CUDA time, GPU busy share of the wall time, trace as ``profile_trace.json.gz``.

Every check has a time limit (SIGALRM) inside one total budget (``--budget-s``); a check that cannot get its
minimum is skipped with the reason. The report is printed after each row and at the end, and written to
``OUT/gpu_check.md`` + ``gpu_check.json`` (``--out``, default ``$OUT``, else the current directory).

Device: ``bash benchmarks/gpu_check.sh`` (installs the carried wheels, runs this). CPU dry run (tests):
``python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/x``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import gzip
import json
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
# bigseer is run from the repo root, not installed: make `import bigseer` (and the benchmarks' shared
# helpers, e.g. bench_data's JPEG generator) work from anywhere
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# dense bf16 tensor-core peaks (TFLOP/s) by GPU name substring, most specific first (NVIDIA datasheets)
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200 NVL", 835.0), ("H200", 989.0),
    ("GH200", 989.0), ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0),
]
MFU_PROFILE_BELOW = 0.35
# packages bigseer can import that the device image lacks and .whl/ does not carry: the script must not need them
NOT_ON_DEVICE = ("omegaconf", "antlr4", "submitit", "webdataset", "lightly", "s3fs", "gcsfs")


@dataclass(frozen=True)
class Variant:
    """One throughput measurement: trunk preset, eager / compile, channels_last, whether it probes its batch."""

    model: str
    mode: str  # "eager" | "compile"
    channels_last: bool
    probe: bool = False
    min_s: float = 30.0  # skipped when less of the budget is left
    max_s: float = 60.0  # its time limit

    @property
    def name(self) -> str:
        return f"throughput {self.model.replace('regnety_', '')} {self.mode}{'+cl' if self.channels_last else ''}"


@dataclass(frozen=True)
class Sizes:
    """Sizes and time limits of one run (FULL on the GPU, TINY for the CPU dry run)."""

    model: str  # backend checks: small SwAV model
    crops: str
    batch: int
    head_dims: tuple[int, ...]
    embed_dim: int
    prototypes: int
    steps: int
    small_s: float  # time limit of each backend / syncbn check
    jpeg_images: int
    jpeg_size: tuple[int, int]
    jpeg_crops: str
    jpeg_repeats: int
    tp_crops: str
    tp_head_dims: tuple[int, ...]
    tp_embed: int
    tp_prototypes: int
    tp_sinkhorn: int
    tp_start_batch: int
    tp_max_batch: int
    tp_max_step_s: float  # the probe does not double past a step this long
    tp_probe_s: float  # seconds the probe may take
    tp_warmup: int
    tp_min_steps: int
    tp_max_steps: int
    tp_time_s: float  # timed steps run until this much time (and tp_min_steps) is reached
    tp_profile_steps: int
    tp_reserve: float  # seconds of the budget the backend checks leave to the throughput section
    variants: tuple[Variant, ...]


FULL = Sizes(model="regnety_800mf", crops="2x96+4x48", batch=16, head_dims=(1024,), embed_dim=128, prototypes=3000,
             steps=3, small_s=40.0, jpeg_images=24, jpeg_size=(4000, 3000), jpeg_crops="2x224+4x96", jpeg_repeats=3,
             tp_crops="2x224+4x96", tp_head_dims=(8192, 8192), tp_embed=256, tp_prototypes=16384, tp_sinkhorn=10,
             tp_start_batch=8, tp_max_batch=256, tp_max_step_s=3.0, tp_probe_s=30.0, tp_warmup=1, tp_min_steps=4,
             tp_max_steps=20, tp_time_s=8.0, tp_profile_steps=2, tp_reserve=190.0,
             variants=(Variant("regnety_128gf", "eager", True, probe=True, min_s=40, max_s=90),
                       Variant("regnety_128gf", "eager", False, min_s=30, max_s=45),
                       Variant("regnety_128gf", "compile", True, min_s=60, max_s=200),
                       Variant("regnety_256gf", "eager", True, probe=True, min_s=45, max_s=80)))
# tiny crops of 64/32 px, not 32/16: at 16 px regnety_test's last stages are 1x1 and bf16 on CPU (oneDNN) then
# gives sporadic gradient spikes (1e14..1e31) after the first update, under ddp and fsdp alike (fp32 is clean)
TINY = Sizes(model="regnety_test", crops="2x64+4x32", batch=4, head_dims=(32,), embed_dim=16, prototypes=32,
             steps=2, small_s=30.0, jpeg_images=3, jpeg_size=(320, 240), jpeg_crops="2x32+4x16", jpeg_repeats=1,
             tp_crops="2x64+4x32", tp_head_dims=(32,), tp_embed=16, tp_prototypes=32, tp_sinkhorn=3,
             tp_start_batch=4, tp_max_batch=8, tp_max_step_s=5.0, tp_probe_s=10.0, tp_warmup=1, tp_min_steps=2,
             tp_max_steps=2, tp_time_s=0.0, tp_profile_steps=1, tp_reserve=5.0,
             variants=(Variant("regnety_test", "eager", True, probe=True, min_s=3, max_s=30),
                       Variant("regnety_test", "eager", False, min_s=3, max_s=30),
                       Variant("regnety_test", "compile", True, min_s=3, max_s=60),
                       Variant("regnety_tiny", "eager", True, probe=True, min_s=3, max_s=30)))


@dataclass
class Row:
    """One table row: check name, status (``ok``, ``FAIL: ...`` or ``skipped: ...``), details, numbers, seconds."""

    name: str
    status: str = "ok"
    details: str = ""
    seconds: float = 0.0
    numbers: dict[str, Any] = field(default_factory=dict)


class Skip(Exception):
    """A check that cannot run here (e.g. needs CUDA): reported as ``skipped: <reason>``."""


class CheckTimeout(Exception):
    """A check ran past its time limit."""


class Terminated(BaseException):
    """SIGTERM (the shell's ``timeout``): stop, but write the report first."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``CheckTimeout`` in the main thread after ``seconds`` (SIGALRM; interrupts Python code only)."""
    def on_alarm(signum: int, frame: Any) -> None:
        raise CheckTimeout(f"time limit {seconds:.0f}s reached")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def parse_crops(spec: str) -> list[tuple[int, int]]:
    """``"2x224+4x96"`` -> ``[(2, 224), (4, 96)]``."""
    out = []
    for part in spec.split("+"):
        n, res = part.lower().split("x")
        out.append((int(n), int(res)))
    return out


def make_crops(spec: str, batch: int, device: Any, seed: int = 0) -> list[Any]:
    """Random crop groups ``[n, B, 3, H, W]`` as ``SwAVModel.forward`` takes them, made on ``device``."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(n, batch, 3, r, r, generator=g, device=device) for n, r in parse_crops(spec)]


def peak_tflops(name: str) -> float | None:
    """Spec dense bf16 peak of the GPU called ``name`` (None when unknown)."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return tflops
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_one_rank(device: str) -> None:
    """A 1-rank default process group from env (torchrun's, or set here): nccl on CUDA, gloo on CPU."""
    import torch
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(k, v)
    if int(os.environ["WORLD_SIZE"]) != 1:
        raise SystemExit("gpu_check.py runs on one rank (WORLD_SIZE=1)")
    if dist.is_initialized():
        return
    if device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl", device_id=torch.device("cuda", torch.cuda.current_device()))
    else:
        dist.init_process_group("gloo")


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def lars_factory(lr: float = 0.05) -> Callable[[Any], Any]:
    from bigseer.optim import LARS

    return lambda groups: LARS(groups, lr=lr, momentum=0.9, weight_decay=1e-5, trust_coefficient=0.001)


def sgd_factory(lr: float = 0.05) -> Callable[[Any], Any]:
    import torch

    return lambda groups: torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=1e-5)


def swav_config(model: str, head_dims: tuple[int, ...], embed_dim: int, prototypes: int, sinkhorn: int = 3) -> Any:
    from bigseer.config import PretrainConfig

    return PretrainConfig(model=model, head_dims=tuple(head_dims), embed_dim=embed_dim, num_prototypes=prototypes,
                          sinkhorn_iters=sinkhorn, crops_for_assign=(0, 1))


def _clean_key(k: str) -> str:
    """A state-dict key without FairScale's wrapper levels (normally its hooks strip them already)."""
    return k.replace("_fsdp_wrapped_module.", "").replace("_fpw_module.", "")


def full_float_state(par: Any) -> dict[str, Any]:
    """The whole model state (gathered by the backend's ``full_state_dict``: collective) as fp32 CPU tensors."""
    return {_clean_key(k): v.detach().float().cpu().clone() for k, v in par.full_state_dict().items()}


def trunk_weight_snapshot(par: Any) -> dict[str, Any]:
    """Weights that a skipped step must leave bitwise unchanged: everything but BN running stats and the
    prototypes (``normalize_prototypes`` runs after every step, skipped or not, and may move them by an ulp)."""
    return {k: v for k, v in full_float_state(par).items()
            if "running" not in k and "num_batches" not in k and "prototypes" not in k}


def max_change(before: dict[str, Any], after: dict[str, Any]) -> float:
    return max((float((after[k] - before[k]).abs().max()) for k in before if k in after and before[k].numel()),
               default=0.0)


def compare_states(ref: dict[str, Any], got: dict[str, Any]) -> tuple[float, list[str], list[str]]:
    """(max |got - ref| over common keys, keys missing from got, keys only in got)."""
    diff = max_change(ref, got)
    return diff, sorted(set(ref) - set(got)), sorted(set(got) - set(ref))


def pieces_as_full(pieces: list[Any]) -> dict[str, Any]:
    """Each piece's logical tensor (flat fp32 CPU) rebuilt from its ranges (one rank: all of it)."""
    import torch

    out = {}
    for p in pieces:
        flat = out.setdefault(p.name, torch.full((math.prod(p.shape),), float("nan")))
        local = p.local.detach().reshape(-1).float().cpu()
        for g0, l0, n in p.ranges:
            flat[g0:g0 + n] = local[l0:l0 + n]
    return out


def train_step(par: Any, crops: list[Any], inject: bool = False, lr: float = 0.05) -> tuple[float, bool]:
    """One SwAV step as the engine runs it; ``inject`` multiplies the loss by inf (an fp16 overflow)."""
    par.set_lr(lr)
    loss = par.forward(crops)
    par.backward(loss * float("inf") if inject else loss)
    applied = bool(par.step())
    par.run_on_full_params(par.unwrapped.normalize_prototypes)
    par.zero_grad()
    return float(loss.detach().float()), applied


def run_steps(par: Any, crops: list[Any], steps: int, device: str, inject: int = 0, extra: int = 6) -> dict[str, Any]:
    """SwAV steps until ``steps`` were applied (at most ``steps + extra``: fp16 dynamic loss scaling skips the
    first steps while its scale comes down from 2^16); then, with a loss scaler and ``inject`` > 0, that many
    injected overflows and one more normal step. Returns losses, applied flags, loss scales, the largest
    weight change, and the injection's outcome."""
    before = trunk_weight_snapshot(par)
    losses: list[float] = []
    applied: list[bool] = []
    scales: list[float | None] = []

    def one(inj: bool) -> None:
        loss, ok = train_step(par, crops, inj)
        losses.append(loss)
        applied.append(ok)
        scales.append(par.loss_scale)

    while sum(applied) < steps and len(applied) < steps + extra:
        one(False)
    res: dict[str, Any] = {"losses": losses, "applied": applied, "scales": scales}
    if inject and par.loss_scale is not None:
        scale0, snap0 = par.loss_scale, trunk_weight_snapshot(par)
        for _ in range(inject):
            one(True)
        res["inject"] = {"count": inject, "applied": applied[-inject:], "scale_before": scale0,
                         "scale_after": par.loss_scale, "weight_change": max_change(snap0, trunk_weight_snapshot(par))}
        one(False)
        res["inject"]["recovered"] = applied[-1]
    sync(device)
    res["weight_change"] = max_change(before, trunk_weight_snapshot(par))
    return res


def judge_steps(res: dict[str, Any]) -> str | None:
    """None when the steps look right, else the one-line reason."""
    normal = [x for x, inj in zip(res["losses"], _injected_flags(res)) if not inj]
    if not all(math.isfinite(x) for x in normal):
        return f"non-finite loss {res['losses']}"
    if not any(res["applied"]):
        return f"no step applied (all skipped; loss scales {res['scales']})"
    if not res["weight_change"] > 0:
        return "weights unchanged after applied steps"
    inj = res.get("inject")
    if inj:
        if any(inj["applied"]):
            return f"an injected overflow was applied (applied flags {inj['applied']})"
        if inj["weight_change"] != 0:
            return f"weights changed by {inj['weight_change']:.2e} over skipped (overflow) steps"
        if not inj["scale_after"] < inj["scale_before"]:
            return f"loss scale not reduced by {inj['count']} overflow(s): {inj['scale_before']:g} -> {inj['scale_after']:g}"
        if not inj["recovered"]:
            return "the step after the injected overflow(s) was not applied"
    return None


def _injected_flags(res: dict[str, Any]) -> list[bool]:
    n = len(res["losses"])
    inj = res.get("inject")
    if not inj:
        return [False] * n
    k = inj["count"]
    return [False] * (n - k - 1) + [True] * k + [False]


def describe_steps(res: dict[str, Any], precision: str) -> str:
    normal = [x for x, inj in zip(res["losses"], _injected_flags(res)) if not inj]
    s = (f"{precision}; loss {normal[0]:.4f}->{normal[-1]:.4f}; applied {sum(res['applied'])}/{len(res['applied'])}; "
         f"max /dW/ {res['weight_change']:.2e}")
    if res["scales"][-1] is not None:
        s += f"; loss scale {res['scales'][0]:g}->{res['scales'][-1]:g}"
    inj = res.get("inject")
    if inj:
        s += (f"; {inj['count']} injected overflow(s): applied {inj['applied']}, dW {inj['weight_change']:.1e}, "
              f"scale {inj['scale_before']:g}->{inj['scale_after']:g}, next step applied {inj['recovered']}")
    return s


@dataclass
class Ctx:
    device: str
    sizes: Sizes
    batch: int | None = None
    compile_backend: str = "inductor"
    force_profile: bool = False
    out: str | None = None
    shared: dict[str, Any] = field(default_factory=dict)  # what one check hands the next (live models, batches)
    throughput: list[dict[str, Any]] = field(default_factory=list)
    profile: dict[str, Any] | None = None


# ---- SyncBN ------------------------------------------------------------------------------------------------
_BN_C = 16


def _bn_input(ctx: Ctx) -> Any:
    import torch

    g = torch.Generator().manual_seed(1)
    return (torch.randn(8, _BN_C, 10, 10, generator=g) * 3 + 1).to(ctx.device)


def _bn_compare(ref: Any, fn: Callable[[Any], Any], mod: Any, x: Any) -> dict[str, float]:
    """Max abs differences (output, input grad, weight/bias grads, running stats) of ``fn`` vs ``ref``."""
    import torch

    g = torch.Generator().manual_seed(2)
    gy = torch.randn(x.shape, generator=g).to(x.device)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ref(xa), fn(xb)
    (ya * gy).sum().backward()
    (yb * gy).sum().backward()
    diff = lambda a, b: float((a.detach().float() - b.detach().float()).abs().max())
    return {"out": diff(ya, yb), "dx": diff(xa.grad, xb.grad), "dw": diff(ref.weight.grad, mod.weight.grad),
            "db": diff(ref.bias.grad, mod.bias.grad), "mean": diff(ref.running_mean, mod.running_mean),
            "var": diff(ref.running_var, mod.running_var)}


def _fmt_errs(errs: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.1e}" for k, v in errs.items())


def check_syncbn_bigseer(ctx: Ctx) -> Row:
    """GroupSyncBatchNorm on the (1-rank) world group == nn.BatchNorm2d; once more with the all-reduce forced."""
    import torch.distributed as dist
    from torch import nn

    import bigseer.parallel.syncbn as syncbn_mod
    from bigseer.parallel import GroupSyncBatchNorm

    def run() -> dict[str, float]:
        x, ref = _bn_input(ctx), nn.BatchNorm2d(_BN_C).to(ctx.device)
        sbn = GroupSyncBatchNorm(_BN_C, process_group=dist.group.WORLD).to(ctx.device)
        sbn.load_state_dict(ref.state_dict())
        return _bn_compare(ref, sbn, sbn, x)

    errs = run()
    calls = []
    real = syncbn_mod.dist.all_reduce

    def counting(*a: Any, **k: Any) -> Any:
        calls.append(1)
        return real(*a, **k)

    # on one rank GroupSyncBatchNorm skips its all-reduce; pretend a larger group so that the stats and the
    # backward's sums go through the backend (an identity on one rank)
    with mock.patch.object(syncbn_mod, "get_world_size", lambda group=None: 2), \
            mock.patch.object(syncbn_mod.dist, "all_reduce", counting):
        forced = run()
    backend = dist.get_backend()
    row = Row("syncbn bigseer", numbers={"shipped": errs, "forced_all_reduce": forced, "all_reduce_calls": len(calls)})
    row.details = (f"1 device, world size 1 (2-process vs nn.SyncBatchNorm needs 2 GPUs): GroupSyncBatchNorm vs "
                   f"BatchNorm2d on {ctx.device} max err {_fmt_errs(errs)}; all-reduce forced through {backend} "
                   f"({len(calls)} calls) max err {_fmt_errs(forced)}")
    worst = max(list(errs.values()) + list(forced.values()))
    if not worst < 1e-4:
        row.status = f"FAIL: differs from BatchNorm2d by {worst:.2e}"
    elif len(calls) < 2:
        row.status = f"FAIL: forced all-reduce ran {len(calls)} times (expected forward + backward)"
    return row


def check_syncbn_torch(ctx: Ctx) -> Row:
    """torch nn.SyncBatchNorm (and its CUDA sync kernels via the autograd function) == nn.BatchNorm2d."""
    import torch.distributed as dist
    from torch import nn

    if ctx.device != "cuda":
        raise Skip("no CUDA (nn.SyncBatchNorm refuses CPU tensors)")
    x, ref = _bn_input(ctx), nn.BatchNorm2d(_BN_C).to(ctx.device)
    sbn = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(_BN_C))).to(ctx.device)[0]
    sbn.load_state_dict(ref.state_dict())
    errs = _bn_compare(ref, sbn, sbn, x)
    # nn.SyncBatchNorm skips syncing on a 1-rank group; drive its autograd function directly so the CUDA
    # batch_norm_stats / gather_stats_with_counts kernels and the NCCL all-gather run too
    from torch.nn.modules._functions import SyncBatchNorm as SyncBNFunction

    fn_bn = nn.BatchNorm2d(_BN_C).to(ctx.device)
    fn_bn.load_state_dict(ref.state_dict())

    def through_fn(t: Any) -> Any:
        return SyncBNFunction.apply(t, fn_bn.weight, fn_bn.bias, fn_bn.running_mean, fn_bn.running_var, fn_bn.eps,
                                    fn_bn.momentum, dist.group.WORLD, 1)

    errs_fn = _bn_compare(ref, through_fn, fn_bn, x)
    row = Row("syncbn torch", numbers={"module": errs, "sync_function": errs_fn})
    row.details = (f"nn.SyncBatchNorm max err {_fmt_errs(errs)}; sync autograd fn (CUDA stats kernels + NCCL) "
                   f"max err {_fmt_errs(errs_fn)}")
    worst = max(list(errs.values()) + list(errs_fn.values()))
    if not worst < 1e-4:
        row.status = f"FAIL: differs from BatchNorm2d by {worst:.2e}"
    return row


# ---- backends ----------------------------------------------------------------------------------------------
def _small_cfg(ctx: Ctx) -> Any:
    s = ctx.sizes
    return swav_config(s.model, s.head_dims, s.embed_dim, s.prototypes)


def _small_model(ctx: Ctx, meta: bool = False) -> Any:
    import torch

    from bigseer.engine import build_swav_model

    cfg = _small_cfg(ctx)
    torch.manual_seed(0)
    if meta:
        with torch.device("meta"):
            return build_swav_model(cfg, device="meta")
    return build_swav_model(cfg).to(ctx.device)


def _small_crops(ctx: Ctx) -> list[Any]:
    return make_crops(ctx.sizes.crops, ctx.sizes.batch, ctx.device)


def check_fsdp(ctx: Ctx, precision: str) -> Row:
    """FSDP2 (bigseer.parallel.setup backend fsdp, meta-built model) + LARS: SwAV steps in ``precision``; fp16
    also gets one injected overflow."""
    from bigseer import parallel

    par = parallel.setup(_small_model(ctx, meta=True), backend="fsdp", precision=precision,
                         optimizer_factory=lars_factory(), device_type=ctx.device)
    res = run_steps(par, _small_crops(ctx), ctx.sizes.steps, ctx.device, inject=1 if precision == "fp16" else 0)
    row = Row(f"fsdp {precision}", details=f"FSDP2 {ctx.sizes.model}, LARS; " + describe_steps(res, par.precision),
              numbers=res)
    reason = judge_steps(res)
    if reason:
        row.status = "FAIL: " + reason
    elif precision == "fp16" and "inject" not in res:
        row.status = "FAIL: no fp16 loss scaler (GradScaler) reported"
    return row


def check_deepspeed(ctx: Ctx) -> Row:
    """DeepSpeed ZeRO-2 with ds_configs/zero2.json (fp16, dynamic loss scaling) + LARS (SGD if refused);
    two injected overflows (hysteresis 2: the second one halves the scale)."""
    from bigseer import parallel
    from bigseer.errors import ConfigError
    from bigseer.parallel.deepspeed import load_ds_config

    try:
        import deepspeed
    except ImportError as exc:
        raise Skip(f"deepspeed not importable ({exc}); carry .whl (scripts/fetch_device_wheels.sh)") from None
    cfg = load_ds_config(str(ROOT / "ds_configs" / "zero2.json"))
    cfg["train_micro_batch_size_per_gpu"] = ctx.sizes.batch
    note = "LARS"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            par = parallel.setup(_small_model(ctx), backend="deepspeed", precision="fp16", ds_config=cfg,
                                 optimizer_factory=lars_factory(), device_type=ctx.device)
        except ConfigError as exc:
            if "LARS" not in str(exc):
                raise
            note = f"SGD (LARS refused under ZeRO-2: {exc})"
            print(f"note: {note}", flush=True)
            par = parallel.setup(_small_model(ctx), backend="deepspeed", precision="fp16", ds_config=cfg,
                                 optimizer_factory=sgd_factory(), device_type=ctx.device)
    fallback = [str(w.message) for w in caught if "falling back" in str(w.message)]
    res = run_steps(par, _small_crops(ctx), ctx.sizes.steps, ctx.device, inject=2)
    prec = par.precision + (" (CPU fallback from fp16, no loss scaler: no overflow injected)" if fallback else "")
    row = Row("deepspeed zero2 fp16", details=f"deepspeed {deepspeed.__version__} ZeRO-2 ds_configs/zero2.json, "
                                             f"{ctx.sizes.model}, {note.split(' (')[0]}; " + describe_steps(res, prec),
              numbers={**res, "optimizer": note})
    reason = judge_steps(res)
    if reason:
        row.status = "FAIL: " + reason
    elif ctx.device == "cuda" and par.precision != "fp16":
        row.status = f"FAIL: effective precision {par.precision}, not fp16, on CUDA"
    elif ctx.device == "cuda" and "inject" not in res:
        row.status = "FAIL: no fp16 loss scale reported"
    return row


def check_fairscale(ctx: Ctx) -> Row:
    """FairScale FSDP fp16 (+ ShardedGradScaler) + LARS: SwAV steps and an injected overflow (CUDA only). On CPU
    a ddp fp16 stand-in, so that ``fairscale checkpoint`` has a model to save in the dry run."""
    from bigseer import parallel

    cuda = ctx.device == "cuda"
    version = None
    with contextlib.suppress(ImportError):
        import fairscale

        version = fairscale.__version__
    if cuda and version is None:
        raise Skip("fairscale is not installed (carry .whl: scripts/fetch_device_wheels.sh)")
    backend = "fairscale" if cuda else "ddp"
    cfg = _small_cfg(ctx)
    crops = _small_crops(ctx)
    par = parallel.setup(_small_model(ctx), backend=backend, precision="fp16", optimizer_factory=lars_factory(),
                         device_type=ctx.device)
    scaler = f"{type(par.scaler).__module__}.{type(par.scaler).__name__}" if par.scaler is not None else None
    res = run_steps(par, crops, ctx.sizes.steps, ctx.device, inject=1)
    ctx.shared["fairscale"] = {"par": par, "cfg": cfg, "backend": backend, "crops": crops}
    what = f"fairscale {version} FSDP" if cuda else "CPU stand-in (fairscale is CUDA-only): ddp"
    row = Row("fairscale fp16", details=f"{what}, {ctx.sizes.model}, LARS, {str(scaler).rsplit('.', 1)[-1]}; "
                                       + describe_steps(res, par.precision), numbers={**res, "scaler": scaler})
    reason = judge_steps(res)
    if reason:
        row.status = "FAIL: " + reason
    elif "inject" not in res:
        row.status = "FAIL: no fp16 loss scale reported"
    elif cuda and not str(scaler).startswith("fairscale."):
        row.status = f"FAIL: loss scaler is {scaler}, not fairscale's ShardedGradScaler"
    elif not cuda:
        row.status = "ok (CPU stand-in: ddp)"
    return row


def check_fairscale_checkpoint(ctx: Ctx) -> Row:
    """Save the fairscale model's pieces in bigseer's elastic format, step, load back, load under fsdp, export."""
    import torch

    from bigseer import parallel
    from bigseer.checkpoint import load_checkpoint, save_checkpoint
    from bigseer.engine import _meta, build_swav_model
    from bigseer.export import export_checkpoint, load_pretrained

    live = ctx.shared.pop("fairscale", None)
    if live is None:
        raise Skip("the fairscale fp16 row left no model (it failed or was skipped)")
    par, cfg, backend, crops = live["par"], live["cfg"], live["backend"], live["crops"]
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_ckpt_"))
    n: dict[str, Any] = {"backend": backend}
    problems: list[str] = []
    try:
        par.sync_bn_stats()
        ref = full_float_state(par)
        ref_pieces = pieces_as_full(par.state_pieces())
        scaler = par.scaler_state()
        t0 = time.perf_counter()
        step_dir = save_checkpoint(tmp, 7, par.state_pieces(), {"step": 7, "scaler": scaler}, _meta(cfg, backend))
        n["save_s"] = time.perf_counter() - t0
        n["pieces"] = len(ref_pieces)
        n["optim_pieces"] = sum(k.startswith("optim.") for k in ref_pieces)
        n["checkpoint_mib"] = sum(f.stat().st_size for f in step_dir.rglob("*") if f.is_file()) / 2**20
        for _ in range(4):  # move the weights (and momentum) away from the checkpoint: one applied step
            if train_step(par, crops)[1]:
                break
        n["moved"] = max_change(ref, full_float_state(par))
        if not n["moved"] > 0:
            problems.append("no applied step after saving (the reload proves nothing)")

        trainer, _, missing = load_checkpoint(step_dir, par.state_pieces())
        par.after_load()
        par.load_scaler_state(trainer.get("scaler"))
        n["reload_diff"], gone, extra = compare_states(ref, full_float_state(par))
        n["reload_pieces_diff"] = max_change(ref_pieces, pieces_as_full(par.state_pieces()))
        if missing or gone or extra or n["reload_diff"] != 0 or n["reload_pieces_diff"] != 0:
            problems.append(f"{backend} reload: diff {n['reload_diff']:.2e} (pieces {n['reload_pieces_diff']:.2e}), "
                            f"missing {missing + gone}, extra {extra}")

        torch.manual_seed(0)
        with torch.device("meta"):
            meta_model = build_swav_model(cfg, device="meta")
        fs = parallel.setup(meta_model, backend="fsdp", precision="fp16", optimizer_factory=lars_factory(),
                            device_type=ctx.device)
        trainer2, _, missing2 = load_checkpoint(step_dir, fs.state_pieces())
        fs.after_load()
        fs.load_scaler_state(trainer2.get("scaler"))
        fs_pieces = pieces_as_full(fs.state_pieces())
        n["fsdp_diff"], gone2, extra2 = compare_states(ref, full_float_state(fs))
        n["fsdp_pieces_diff"] = max_change(ref_pieces, fs_pieces)
        names_only_ckpt, names_only_fsdp = sorted(set(ref_pieces) - set(fs_pieces)), sorted(set(fs_pieces) - set(ref_pieces))
        if missing2 or gone2 or extra2 or names_only_ckpt or names_only_fsdp or n["fsdp_diff"] != 0 \
                or n["fsdp_pieces_diff"] != 0:
            problems.append(f"fsdp load: diff {n['fsdp_diff']:.2e} (pieces {n['fsdp_pieces_diff']:.2e}), missing "
                            f"{(missing2 + gone2)[:4]}, extra {extra2[:4]}, names only in checkpoint "
                            f"{names_only_ckpt[:4]}, only in fsdp {names_only_fsdp[:4]}")
        n["scale_saved"], n["scale_fsdp"] = (scaler or {}).get("scale"), fs.loss_scale
        if scaler and fs.loss_scale != scaler["scale"]:
            problems.append(f"fsdp loss scale {fs.loss_scale} after load, checkpoint {scaler['scale']}")
        loss, applied = train_step(fs, crops)
        n["fsdp_step"] = {"loss": loss, "applied": applied}
        if not math.isfinite(loss):
            problems.append(f"fsdp step after load: loss {loss}")
        del fs, meta_model

        t0 = time.perf_counter()
        files = export_checkpoint(step_dir, tmp / "export")
        n["export_s"] = time.perf_counter() - t0
        n["export_files"] = sorted(Path(f).name for f in files)
        trunk_sd = {k: v.float() for k, v in load_pretrained(tmp / "export").state_dict().items()}
        ref_trunk = {k[len("trunk."):]: v for k, v in ref.items() if k.startswith("trunk.")}
        n["export_diff"], gone3, extra3 = compare_states(ref_trunk, trunk_sd)
        if gone3 or extra3 or n["export_diff"] != 0:
            problems.append(f"export: diff {n['export_diff']:.2e}, missing {gone3[:4]}, extra {extra3[:4]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        del par
        free_memory(ctx.device)
    row = Row("fairscale checkpoint", numbers=n)
    row.details = (f"{backend} state_pieces -> elastic checkpoint ({n['pieces']} tensors, {n['optim_pieces']} optim, "
                   f"{n['checkpoint_mib']:.1f} MiB, {n['save_s']:.1f}s); after a step (moved {n['moved']:.1e}) "
                   f"reloaded: max diff {n['reload_diff']:.1e}; loaded under fsdp: max diff {n['fsdp_diff']:.1e}, "
                   f"pieces {n['fsdp_pieces_diff']:.1e}, loss scale {n['scale_fsdp']}, next step loss "
                   f"{n['fsdp_step']['loss']:.4f}; export_checkpoint ({', '.join(n['export_files'][:3])}) + "
                   f"load_pretrained: trunk max diff {n['export_diff']:.1e}")
    if problems:
        row.status = "FAIL: " + "; ".join(problems)
    elif backend != "fairscale":
        row.status = "ok (CPU stand-in: ddp)"
    return row


# ---- JPEG decode -------------------------------------------------------------------------------------------
def make_jpeg(path: str, size: tuple[int, int], seed: int) -> None:
    """A camera-like JPEG (smooth scene + detail + sensor noise, quality 90): benchmarks/bench_data.py's."""
    import numpy as np
    from bench_data import write_camera_jpeg

    write_camera_jpeg(path, size, np.random.default_rng(seed))


def check_jpeg(ctx: Ctx) -> Row:
    """SampleRenderer on ``ctx.device`` (CUDA: nvjpeg + tensor augmentations) vs the CPU path, same crop plans."""
    import numpy as np

    try:
        from bigseer.data import AugmentConfig, open_source
        from bigseer.data import parse_crops as data_crops
        from bigseer.data.multicrop import normalize_uint8
        from bigseer.data.render import SampleRenderer
    except ImportError as exc:
        raise Skip(f"bigseer.data cannot be imported ({exc}); carry simplejpeg in .whl") from None
    import bigseer.data.tensor_augment as ta

    s = ctx.sizes
    cuda = ctx.device == "cuda"
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_jpeg_"))
    try:
        folder = tmp / "images"
        folder.mkdir()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            list(pool.map(lambda i: make_jpeg(str(folder / f"img_{i:04d}.jpg"), s.jpeg_size, i),
                          range(s.jpeg_images)))
        gen_s = time.perf_counter() - t0
        mb = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        catalog = open_source(str(folder))
        groups, aug = data_crops(s.jpeg_crops), AugmentConfig()
        renderers = {"cpu": SampleRenderer(catalog, groups, aug),
                     ctx.device + "-tensor": SampleRenderer(catalog, groups, aug, device=ctx.device)}
        counts = {"nvjpeg": 0, "fallback": 0}
        real = ta._nvjpeg

        def counting(*a: Any, **k: Any) -> Any:
            out = real(*a, **k)
            counts["fallback" if out is None else "nvjpeg"] += 1
            return out

        def batch(r: Any, seed: int, items: range) -> list[Any]:
            buffers = r.new_buffers(len(items))
            for b, item in enumerate(items):
                r.place(buffers, b, r.render(item, np.random.default_rng([seed, item])))
            crops = [normalize_uint8(buf, aug) for buf in buffers]
            sync(ctx.device)
            assert crops[0].shape[-1] == groups[0].size
            return buffers

        items = range(len(catalog))
        times: dict[str, list[float]] = {k: [] for k in renderers}
        last: dict[str, list[Any]] = {}
        with mock.patch.object(ta, "_nvjpeg", counting):
            for r in renderers.values():  # warm-up (nvjpeg handle, CUDA kernels, first-call costs)
                batch(r, 99, range(1))
            counts.update(nvjpeg=0, fallback=0)
            for rep in range(s.jpeg_repeats):
                order = list(renderers) if rep % 2 == 0 else list(renderers)[::-1]
                for key in order:
                    t0 = time.perf_counter()
                    last[key] = batch(renderers[key], rep, items)
                    times[key].append(time.perf_counter() - t0)
        rates = {k: len(items) / (sum(v) / len(v)) for k, v in times.items()}
        key_dev = ctx.device + "-tensor"
        a = [b.cpu().float() for b in last["cpu"]]
        bb = [b.cpu().float() for b in last[key_dev]]
        mean_diff = float(sum((x - y).abs().sum() for x, y in zip(a, bb)) / sum(x.numel() for x in a))
        max_diff = float(max((x - y).abs().max() for x, y in zip(a, bb)))
        from bigseer.data import MultiCropStream  # the engine's --decode_device path: batches arrive on the device

        stream = MultiCropStream(str(folder), s.jpeg_crops, 2, device=ctx.device)
        first = next(iter(stream))
        stream.close()
        stream_device = first.crops[0].device.type
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = rates[key_dev] / rates["cpu"]
    w, h = s.jpeg_size
    row = Row("jpeg decode", numbers={"images": len(items), "size": [w, h], "mib": mb, "generate_s": gen_s,
                                      "images_per_s": rates, "ratio": ratio, "nvjpeg": counts, "repeats": s.jpeg_repeats,
                                      "mean_abs_diff": mean_diff, "max_abs_diff": max_diff,
                                      "stream_device": stream_device})
    row.details = (f"{len(items)} JPEGs {w}x{h} ({w * h / 1e6:.0f} MP, {mb:.0f} MiB), crops {s.jpeg_crops}, one process: "
                   f"{ctx.device} tensor path {rates[key_dev]:.1f} img/s vs CPU path (simplejpeg) {rates['cpu']:.1f} img/s "
                   f"= {ratio:.2f}x; " + (f"nvjpeg {counts['nvjpeg']}, CPU fallbacks {counts['fallback']}; " if cuda else "")
                   + f"crops vs CPU path: mean /diff/ {mean_diff:.2f} LSB, max {max_diff:.0f} (decode.py bound: mean <= 2)")
    row.details += f"; MultiCropStream(device={ctx.device}) batches on {stream_device}"
    if stream_device != ctx.device:
        row.status = f"FAIL: MultiCropStream(device={ctx.device}) gave batches on {stream_device}"
    elif mean_diff > 4.0:
        row.status = f"FAIL: crops differ from the CPU path by {mean_diff:.2f} LSB on average (bound 2)"
    elif cuda and counts["fallback"]:
        row.status = f"FAIL: {counts['fallback']} of {counts['nvjpeg'] + counts['fallback']} JPEGs fell back from nvjpeg"
    elif not cuda:
        row.status = "ok (CPU stand-in: tensor path on CPU)"
    return row


# ---- throughput --------------------------------------------------------------------------------------------
def probe_batch(step_at: Callable[[int], tuple[float, float | None]], start: int, max_batch: int,
                mem_total: float | None, max_step_s: float, budget_s: float, mem_frac: float = 0.9,
                repeat: int = 2) -> tuple[int, list[dict[str, Any]], str, bool]:
    """The largest batch (``start`` doubled, at most ``max_batch``) whose training step runs, found quickly.

    ``step_at(b)`` runs one step at batch ``b`` and returns (seconds, peak memory in bytes or None); it raises
    ``torch.cuda.OutOfMemoryError`` when ``b`` does not fit. Each batch runs ``repeat`` steps (the first one at a
    new shape includes cuDNN autotuning; the fastest counts, the largest peak). Doubling stops at ``max_batch``,
    at an OOM, when the peak memory extrapolated linearly to ``2b`` exceeds ``mem_frac * mem_total``, when a
    step at ``2b`` would take over ``max_step_s``, or when ``budget_s`` would be spent. An OOM at ``start``
    halves it, down to 1. Returns (batch, trials, why it stopped, whether an OOM happened)."""
    import torch

    t0 = time.perf_counter()
    trials: list[dict[str, Any]] = []
    good: int | None = None
    oom = False
    b = start
    while True:
        try:
            runs = [step_at(b) for _ in range(max(repeat, 1))]
        except torch.cuda.OutOfMemoryError:
            oom = True
            trials.append({"batch": b, "oom": True})
            if good is not None:
                return good, trials, f"OOM at {b}", oom
            if b <= 1:
                raise
            b //= 2
            continue
        secs = min(r[0] for r in runs)
        peaks = [r[1] for r in runs if r[1] is not None]
        peak = max(peaks) if peaks else None
        trials.append({"batch": b, "s": secs, "peak_gib": None if peak is None else peak / 2**30})
        good = b
        if oom:  # came down from an OOM at 2b: never try it again
            return good, trials, f"OOM at {2 * b}", oom
        if 2 * b > max_batch:
            return good, trials, f"max batch {max_batch}", oom
        if peak is not None and mem_total:
            prev = [t for t in trials[:-1] if not t.get("oom") and t.get("peak_gib") is not None]
            per = (peak - prev[-1]["peak_gib"] * 2**30) / (b - prev[-1]["batch"]) if prev else peak / b
            predicted = peak + per * b
            if predicted > mem_frac * mem_total:
                return good, trials, (f"{2 * b} would need ~{predicted / 2**30:.0f} GiB > {mem_frac:.0%} of "
                                      f"{mem_total / 2**30:.0f}"), oom
        if 2 * secs > max_step_s:
            return good, trials, f"a step at {2 * b} would take ~{2 * secs:.1f}s > {max_step_s:g}s", oom
        if time.perf_counter() - t0 + (repeat + 1) * 2 * secs > budget_s:
            return good, trials, f"probe time {budget_s:g}s", oom
        b *= 2


class _DynamoLog(logging.Handler):
    """Counts torch._dynamo warnings about the recompile (cache size) limit."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.hits: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            msg = record.getMessage()
            if "recompile_limit" in msg or "cache_size_limit" in msg:
                self.hits.append(msg.splitlines()[0][:200])


def _dynamo_counts() -> dict[str, Any]:
    try:
        from torch._dynamo.utils import counters
    except Exception:  # noqa: BLE001
        return {}
    breaks = counters.get("graph_break", {})
    return {"unique_graphs": int(counters.get("stats", {}).get("unique_graphs", 0)),
            "graph_breaks": int(sum(breaks.values())),
            "break_reasons": [str(k)[:120] for k, _ in sorted(breaks.items(), key=lambda kv: -kv[1])[:3]]}


def _build_tp(ctx: Ctx, v: Variant) -> tuple[Any, Any, int]:
    """The variant's SwAV model (meta-built, SEER head) wrapped by FSDP2 bf16 + checkpointing + its speedups."""
    import torch
    from torch import nn

    from bigseer import parallel
    from bigseer.engine import build_swav_model
    from bigseer.models import count_params

    s = ctx.sizes
    cfg = swav_config(v.model, s.tp_head_dims, s.tp_embed, s.tp_prototypes, s.tp_sinkhorn)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = build_swav_model(cfg, device="meta")
    n_params = count_params(model)
    patch: Any = contextlib.nullcontext()
    if v.mode == "compile" and ctx.compile_backend != "inductor":
        real = nn.Module.compile

        def compile_with(self: Any, *a: Any, **k: Any) -> Any:
            k.setdefault("backend", ctx.compile_backend)
            return real(self, *a, **k)

        patch = mock.patch.object(nn.Module, "compile", compile_with)
    with patch:
        par = parallel.setup(model, backend="fsdp", precision="bf16", checkpointing="all",
                             channels_last=v.channels_last, compile=v.mode == "compile",
                             optimizer_factory=lars_factory(0.01), device_type=ctx.device)
    return par, model, n_params


def check_throughput(ctx: Ctx, v: Variant, budget_s: float, keep_live: bool) -> Row:
    """images/s and MFU of one variant; ``keep_live`` leaves the model for the ``profile`` row."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bigseer.perf import FlopMeter, measured_peak_flops

    t_start = time.perf_counter()
    deadline = t_start + budget_s
    s, dev = ctx.sizes, ctx.device
    cuda = dev == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    if "peak_flops" not in ctx.shared:
        ctx.shared["peak_flops"] = measured_peak_flops(dev, torch.bfloat16)
    peak = ctx.shared["peak_flops"]
    gpu = torch.cuda.get_device_name() if cuda else "cpu"
    spec = peak_tflops(gpu) if cuda else None
    dyn_log = _DynamoLog()
    dyn0 = _dynamo_counts() if v.mode == "compile" else {}
    if v.mode == "compile":
        logging.getLogger("torch._dynamo").addHandler(dyn_log)
    state: dict[str, Any] = {}
    crops_by_batch: dict[int, list[Any]] = {}
    stashed = False

    def teardown() -> None:
        state.clear()
        crops_by_batch.clear()
        if v.mode == "compile":
            logging.getLogger("torch._dynamo").removeHandler(dyn_log)
            with contextlib.suppress(Exception):
                torch._dynamo.reset()
        free_memory(dev)

    def build() -> None:
        state.clear()
        free_memory(dev)
        state["par"], state["model"], state["n_params"] = _build_tp(ctx, v)

    def crops_for(b: int) -> list[Any]:
        if b not in crops_by_batch:
            crops_by_batch.clear()
            crops_by_batch[b] = make_crops(s.tp_crops, b, dev)
        return crops_by_batch[b]

    def one_step(b: int) -> Any:
        par = state["par"]
        loss = par.forward(crops_for(b))
        par.backward(loss)
        par.step()
        par.run_on_full_params(state["model"].normalize_prototypes)
        par.zero_grad()
        return loss

    def timed_step(b: int, reset_peak: bool = True) -> tuple[float, float | None]:
        sync(dev)
        if cuda and reset_peak:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        one_step(b)
        sync(dev)
        return time.perf_counter() - t0, float(torch.cuda.max_memory_allocated()) if cuda else None

    notes: list[str] = []
    try:
        t0 = time.perf_counter()
        build()
        build_s = time.perf_counter() - t0
        batches = ctx.shared.setdefault("batch", {})
        batch = ctx.batch or (None if v.probe else batches.get(v.model))
        trials: list[dict[str, Any]] = []
        if batch is None and v.mode == "compile":  # probing would recompile every block at every batch size
            batch = max(s.tp_start_batch, s.tp_max_batch // 4)
            notes.append(f"batch {batch} not probed (compile; no eager probe of {v.model} ran; --batch sets it)")
        if batch is None:
            mem_total = float(torch.cuda.mem_get_info()[1]) if cuda else None
            batch, trials, why, oom = probe_batch(timed_step, s.tp_start_batch, s.tp_max_batch, mem_total,
                                                  s.tp_max_step_s, min(s.tp_probe_s, 0.4 * budget_s))
            notes.append(f"probe {'/'.join(str(t['batch']) + ('!' if t.get('oom') else '') for t in trials)}: {why}")
            if oom:  # an OOM inside FSDP2's backward can leave its state half-way: start from a fresh model
                build()
            batches[v.model] = batch
        t0 = time.perf_counter()
        for _ in range(s.tp_warmup + (1 if v.mode == "compile" else 0)):
            one_step(batch)
        sync(dev)
        warm_s = time.perf_counter() - t0
        # FLOPs of one training step at this batch, counted by torch on a real step (recompute included: what
        # the engine's FlopMeter logs) and of its forward alone (model FLOPs = 3 x forward); compiled code is
        # not counted (the counter would see the compiled graphs' kernels): the eager count of this model is used
        flops = ctx.shared.setdefault("flops", {})
        key = (v.model, s.tp_crops, batch)
        if key not in flops:
            if v.mode == "compile":
                notes.append("FLOPs counted under compile")
            par = state["par"]
            counter = FlopCounterMode(display=False)
            with counter:
                loss = par.forward(crops_for(batch))
                fwd = float(counter.get_total_flops())
                par.backward(loss)
            par.step()
            par.run_on_full_params(state["model"].normalize_prototypes)
            par.zero_grad()
            flops[key] = (float(counter.get_total_flops()), fwd)
            del loss
        step_flops, fwd_flops = flops[key]
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times: list[float] = []
        while True:
            secs, _ = timed_step(batch, reset_peak=False)
            times.append(secs)
            if len(times) >= s.tp_max_steps or (len(times) >= s.tp_min_steps and sum(times) >= s.tp_time_s):
                break
            if time.perf_counter() + 1.5 * secs > deadline - 3:
                notes.append(f"timing stopped after {len(times)} steps (time limit)")
                break
        loss_val = float(one_step(batch).detach().float())
        sync(dev)
        dt = sum(times) / len(times)
        meter = FlopMeter(peak)
        meter.step_flops = step_flops
        m = meter.metrics(dt)
        mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        mem_total_gib = torch.cuda.mem_get_info()[1] / 2**30 if cuda else None
        # the GPU's memory outside PyTorch's allocator (CUDA context, NCCL, cuBLAS/cuDNN workspaces): the
        # runtime term bigseer.plan leaves out on GPUs; and the plan of this very run beside the measured peak
        free_b, total_b = torch.cuda.mem_get_info() if cuda else (0, 0)
        non_torch_gib = (total_b - free_b - torch.cuda.memory_reserved()) / 2**30 if cuda else None
        from bigseer.plan import plan_memory

        plan_gib = plan_memory(v.model, world_size=1, backend="fsdp", precision="bf16", batch_per_gpu=batch,
                               crops=s.tp_crops, checkpointing="all", head_dims=(*s.tp_head_dims, s.tp_embed),
                               prototypes=s.tp_prototypes).total / 2**30
        res = {"variant": v.name, "model": v.model, "mode": v.mode, "channels_last": v.channels_last,
               "params": state["n_params"], "batch": batch, "crops": s.tp_crops, "timed_steps": len(times),
               "step_s": dt, "step_s_min": min(times), "step_s_max": max(times), "images_per_s": batch / dt,
               "flops_per_step": step_flops, "fwd_flops": fwd_flops, "achieved_tflops": m["tflops"],
               "mfu": m["mfu"], "mfu_model": 3 * fwd_flops / dt / peak,
               "mfu_spec": step_flops / dt / (spec * 1e12) if spec else None, "peak_tflops_measured": peak / 1e12,
               "peak_tflops_spec": spec, "max_memory_gib": mem, "memory_total_gib": mem_total_gib, "loss": loss_val,
               "plan_gib": plan_gib, "non_torch_gib": non_torch_gib,
               "build_s": build_s, "warmup_s": warm_s, "probe": trials, "gpu": gpu, "notes": notes}
        if v.mode == "compile":
            dyn1 = _dynamo_counts()
            res["dynamo"] = {"unique_graphs": dyn1.get("unique_graphs", 0) - dyn0.get("unique_graphs", 0),
                             "graph_breaks": dyn1.get("graph_breaks", 0) - dyn0.get("graph_breaks", 0),
                             "break_reasons": dyn1.get("break_reasons", []),
                             "recompile_limit_hits": len(dyn_log.hits), "recompile_limit_msgs": dyn_log.hits[:2],
                             "backend": ctx.compile_backend}
        ctx.throughput.append(res)
        if keep_live:
            ctx.shared["live"] = {"step": lambda: one_step(batch), "mfu": m["mfu"], "variant": v.name,
                                  "batch": batch, "teardown": teardown, "step_s": dt}
            stashed = True
    finally:
        if not stashed:
            teardown()
    row = Row(v.name, numbers=res)
    dyn = res.get("dynamo")
    row.details = (f"{v.model} ({res['params'] / 1e6:.4g}M params, head {list(s.tp_head_dims)}x{s.tp_prototypes}) FSDP2 "
                   f"bf16 ckpt-all LARS, crops {s.tp_crops}, batch {batch}: {res['images_per_s']:.1f} img/s, "
                   f"{dt * 1e3:.0f} ms/step ({len(times)} steps, {min(times) * 1e3:.0f}-{max(times) * 1e3:.0f}), "
                   f"{step_flops / 1e12:.3g} TFLOP/step counted ({fwd_flops / 1e12:.3g} fwd), "
                   f"{m['tflops']:.0f} TFLOP/s; MFU {m['mfu']:.1%} of measured {peak / 1e12:.0f} (model FLOPs "
                   f"{res['mfu_model']:.1%})" + (f", {res['mfu_spec']:.1%} of spec {spec:.0f}" if spec else "")
                   + (f"; max mem {mem:.1f}/{mem_total_gib:.0f} GiB" if mem is not None else "")
                   + f"; build {build_s:.0f}s, warm-up {warm_s:.0f}s"
                   + (f"; dynamo ({dyn['backend']}): {dyn['unique_graphs']} graphs, {dyn['graph_breaks']} breaks"
                      + (f" (first: {dyn['break_reasons'][0].splitlines()[0][:60]})" if dyn["break_reasons"] else "")
                      + f", recompile-limit hits {dyn['recompile_limit_hits']}" if dyn else "")
                   + ("; " + "; ".join(notes) if notes else ""))
    if not (math.isfinite(loss_val) and res["images_per_s"] > 0 and step_flops > 0):
        row.status = f"FAIL: loss {loss_val}, img/s {res['images_per_s']}, flops {step_flops}"
    return row


def check_profile(ctx: Ctx) -> Row:
    """torch.profiler over the first variant's steps: top 10 ops by self CUDA (CPU: self CPU) time."""
    from torch.profiler import ProfilerActivity, profile

    live = ctx.shared.get("live")
    if live is None:
        raise Skip("the first throughput variant left no model to profile (it failed, was skipped or filtered out)")
    mfu = live["mfu"]
    if mfu is not None and mfu >= MFU_PROFILE_BELOW and not ctx.force_profile:
        raise Skip(f"MFU {mfu:.1%} >= {MFU_PROFILE_BELOW:.0%} (use --profile to force)")
    cuda = ctx.device == "cuda"
    steps = ctx.sizes.tp_profile_steps
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(ctx.device)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(steps):
            live["step"]()
        sync(ctx.device)
    wall = time.perf_counter() - t0
    avg = prof.key_averages()

    def dev_us(e: Any) -> float:
        return float(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0)

    def is_kernel(e: Any) -> bool:
        return str(getattr(e, "device_type", "")).upper().endswith(("CUDA", "PRIVATEUSE1"))

    if cuda:
        kernels = [e for e in avg if is_kernel(e)]
        ops = [e for e in avg if not is_kernel(e) and dev_us(e) > 0]
        if not ops:  # a profiler that books device time on the kernels only: rank those
            ops = kernels
        key = dev_us
        # GPU busy time: the kernels' own device time (or, where kernels are not listed apart, the ops' self time)
        busy = sum(dev_us(e) for e in (kernels or ops)) / 1e6
    else:
        ops, key, busy, kernels = list(avg), (lambda e: float(e.self_cpu_time_total)), None, []
    total = sum(key(e) for e in ops) or 1.0
    top = [{"op": e.key[:80], "ms_per_step": key(e) / 1e3 / steps, "share": key(e) / total,
            "calls_per_step": e.count / steps} for e in sorted(ops, key=key, reverse=True)[:10]]
    top_kernels = [{"kernel": e.key[:80], "ms_per_step": dev_us(e) / 1e3 / steps}
                   for e in sorted(kernels, key=dev_us, reverse=True)[:5]]
    trace = None
    if ctx.out:
        with contextlib.suppress(Exception):
            raw = Path(tempfile.mkdtemp(prefix="gpu_check_trace_")) / "trace.json"
            prof.export_chrome_trace(str(raw))
            dest = Path(ctx.out) / "profile_trace.json.gz"
            with open(raw, "rb") as src, gzip.open(dest, "wb", compresslevel=6) as dst:
                shutil.copyfileobj(src, dst)
            shutil.rmtree(raw.parent, ignore_errors=True)
            if dest.stat().st_size > 15 * 2**20:  # the device tool brings back files up to 16 MiB
                dest.unlink()
            else:
                trace = dest.name
    with contextlib.suppress(Exception):
        print(avg.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=15), flush=True)
    ctx.profile = {"variant": live["variant"], "batch": live["batch"], "steps": steps, "wall_s": wall,
                   "gpu_busy_s": busy, "gpu_busy_share": busy / wall if busy is not None else None,
                   "top_ops": top, "top_kernels": top_kernels, "trace": trace, "mfu": mfu,
                   "time": "self CUDA" if cuda else "self CPU"}
    row = Row("profile", numbers=ctx.profile)
    row.details = (f"{live['variant']} batch {live['batch']}, {steps} steps in {wall:.1f}s"
                   + (f", GPU busy {busy / wall:.0%}" if busy is not None else "")
                   + f"; top by {ctx.profile['time']} time: "
                   + ", ".join(f"{t['op']} {t['share']:.0%}" for t in top[:4]) + " (all 10 below)"
                   + (f"; trace {trace}" if trace else ""))
    return row


# ---- driver ------------------------------------------------------------------------------------------------
def run_check(name: str, fn: Callable[[], Row], limit_s: float) -> Row:
    """Run one check under a time limit; any exception becomes a FAIL row (Skip a skipped one)."""
    t0 = time.perf_counter()
    print(f"--- {name} (limit {limit_s:.0f}s)", flush=True)
    try:
        with time_limit(limit_s):
            row = fn()
    except Skip as exc:
        row = Row(name, status=f"skipped: {exc}")
    except (KeyboardInterrupt, SystemExit, Terminated):
        raise
    except BaseException as exc:  # noqa: BLE001 - one failing check must not hide the others
        traceback.print_exc()
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())
        row = Row(name, status=f"FAIL: {msg[:300]}")
    row.name = name
    row.seconds = time.perf_counter() - t0
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(f"ROW | {row.name} | {row.status} | {row.details} | {row.seconds:.1f} |", flush=True)
    return row


def _esc(s: Any) -> str:
    return str(s).replace("|", "/").replace("\n", " ")


def table(rows: list[Row], header: str) -> str:
    lines = [header, "", "| check | status | details | s |", "| --- | --- | --- | --- |"]
    lines += [f"| {_esc(r.name)} | {_esc(r.status)} | {_esc(r.details)} | {r.seconds:.1f} |" for r in rows]
    return "\n".join(lines) + "\n"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def sections(ctx: Ctx) -> str:
    """The throughput table and the profile's top ops (markdown), empty when neither ran."""
    out = []
    if ctx.throughput:
        spec = next((r["peak_tflops_spec"] for r in ctx.throughput if r["peak_tflops_spec"]), None)
        peak = ctx.throughput[0]["peak_tflops_measured"]
        title = (f"### Throughput: SwAV training step, FSDP2 bf16, activation checkpointing, crops "
                 f"{ctx.throughput[0]['crops']}; MFU = counted step FLOPs / step time / peak (bigseer.perf; measured "
                 f"bf16 matmul peak {peak:.0f} TFLOP/s" + (f", spec dense bf16 {spec:.0f}" if spec else "") + ")")
        out += ["", title, "",
                ("| variant | batch | img/s | ms/step | TFLOP/step (fwd) | TFLOP/s | MFU measured peak | MFU model FLOPs "
                 "(3x fwd) | MFU spec peak | max mem GiB (bigseer plan) | outside PyTorch GiB |"),
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in ctx.throughput:
            mem = "-" if r["max_memory_gib"] is None else f"{r['max_memory_gib']:.1f}"
            mem += f" ({r['plan_gib']:.1f})"
            other = "-" if r["non_torch_gib"] is None else f"{r['non_torch_gib']:.2f}"
            out.append(f"| {r['variant']} | {r['batch']} | {r['images_per_s']:.1f} | {r['step_s'] * 1e3:.0f} | "
                       f"{r['flops_per_step'] / 1e12:.3g} ({r['fwd_flops'] / 1e12:.3g}) | {r['achieved_tflops']:.1f} | "
                       f"{_pct(r['mfu'])} | {_pct(r['mfu_model'])} | {_pct(r['mfu_spec'])} | {mem} | {other} |")
    if ctx.profile:
        p = ctx.profile
        busy = f", GPU busy {p['gpu_busy_share']:.0%} of the wall time" if p["gpu_busy_share"] is not None else ""
        title = (f"### Profile: {p['variant']}, batch {p['batch']}, {p['steps']} step(s) in {p['wall_s']:.1f}s{busy} "
                 f"(MFU {_pct(p['mfu'])}; profiled below {MFU_PROFILE_BELOW:.0%} or with --profile); top 10 ops by "
                 f"{p['time']} time")
        out += ["", title, "",
                "| op | ms/step | share | calls/step |", "| --- | --- | --- | --- |"]
        out += [f"| {_esc(t['op'])} | {t['ms_per_step']:.1f} | {t['share']:.1%} | {t['calls_per_step']:.0f} |"
                for t in p["top_ops"]]
        if p["top_kernels"]:
            out += ["", "Top kernels: " + "; ".join(f"{_esc(k['kernel'])} {k['ms_per_step']:.1f} ms/step"
                                                    for k in p["top_kernels"])]
    return "\n".join(out) + ("\n" if out else "")


def environment(device: str) -> dict[str, Any]:
    import importlib.metadata as md
    import subprocess

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
                                           capture_output=True, text=True, timeout=10, check=False).stdout.strip().splitlines()[0]
    for dist in ("torchvision", "deepspeed", "fairscale", "simplejpeg", "safetensors", "numpy", "pillow"):
        try:
            env[dist] = md.version(dist)
        except md.PackageNotFoundError:
            env[dist] = "missing"
    alloc = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
    if alloc:
        env["PYTORCH_CUDA_ALLOC_CONF"] = alloc
    return env


def header_line(env: dict[str, Any], device: str) -> str:
    if device == "cuda":
        head = (f"{env['gpu']} (cc {env['capability']}, {env['sms']} SMs, {env['memory_gib']} GiB, driver "
                f"{env.get('driver', '?')}), torch {env['torch']} (CUDA {env['cuda']}, cuDNN {env['cudnn']}, NCCL "
                f"{env.get('nccl', '?')})")
    else:
        head = f"CPU dry run, torch {env['torch']}"
    rest = ", ".join(f"{k} {env[k]}" for k in ("torchvision", "deepspeed", "fairscale", "simplejpeg", "safetensors",
                                               "numpy", "pillow", "python"))
    alloc = f", PYTORCH_CUDA_ALLOC_CONF={env['PYTORCH_CUDA_ALLOC_CONF']}" if "PYTORCH_CUDA_ALLOC_CONF" in env else ""
    return f"bigseer {env['bigseer']} gpu_check on {head}; {rest}{alloc}; 1-rank process group"


def report(rows: list[Row], header: str, ctx: Ctx) -> str:
    return table(rows, "## gpu_check report\n\n" + header) + sections(ctx)


def write(out: str | None, rows: list[Row], header: str, ctx: Ctx, env: dict[str, Any]) -> None:
    if not out:
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, "gpu_check.md").write_text(report(rows, header, ctx))
    data = {"header": header, "env": env,
            "rows": [{"name": r.name, "status": r.status, "details": r.details, "seconds": r.seconds,
                      "numbers": r.numbers} for r in rows],
            "throughput": ctx.throughput, "profile": ctx.profile,
            "imported_not_on_device": sorted(m for m in NOT_ON_DEVICE if m in sys.modules)}
    tmp = Path(out, "gpu_check.json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(Path(out, "gpu_check.json"))


def wanted_check(name: str, wanted: list[str] | None) -> bool:
    """``--only`` items select a check by its name or by a leading part of it (``throughput``, ``fsdp``)."""
    return not wanted or any(name == w or name.startswith(w + " ") for w in wanted)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (CPU dry run)")
    ap.add_argument("--out", default=os.environ.get("OUT") or ".", help="folder for gpu_check.md/.json (default "
                                                                         "$OUT, else the current directory)")
    ap.add_argument("--budget-s", type=float, default=300.0, help="total seconds for all checks (default 300)")
    ap.add_argument("--batch", type=int, default=None, help="throughput batch (default: found by a probe)")
    ap.add_argument("--tp-max-batch", type=int, default=None, help="largest batch the probe tries")
    ap.add_argument("--only", default=None, help="comma-separated check names or leading parts (e.g. "
                                                  "'throughput,profile'); default all")
    ap.add_argument("--compile-backend", default=None,
                    help="torch.compile backend of the compile variant (default inductor on CUDA, eager on CPU)")
    ap.add_argument("--profile", action="store_true", help="profile even when the MFU is >= 35%%")
    args = ap.parse_args(argv)

    t_begin = time.perf_counter()
    if args.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before any deepspeed import
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False (use --device cpu for a dry run)")
        return 2
    sizes = TINY if args.tiny else FULL
    if args.tp_max_batch:
        sizes = Sizes(**{**sizes.__dict__, "tp_max_batch": args.tp_max_batch})
    backend = args.compile_backend or ("inductor" if args.device == "cuda" else "eager")
    ctx = Ctx(args.device, sizes, args.batch, backend, args.profile, args.out)
    init_one_rank(args.device)
    env = environment(args.device)
    header = header_line(env, args.device)
    print(header, flush=True)

    def on_term(signum: int, frame: Any) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, on_term)
    s = sizes
    small = s.small_s
    checks: list[tuple[str, Callable[[float], Row], float, float, bool]] = [  # name, fn(limit), max, min, throughput?
        ("syncbn bigseer", lambda lim: check_syncbn_bigseer(ctx), small, 3, False),
        ("syncbn torch", lambda lim: check_syncbn_torch(ctx), small, 3, False),
        ("fsdp bf16", lambda lim: check_fsdp(ctx, "bf16"), small, 5, False),
        ("fsdp fp16", lambda lim: check_fsdp(ctx, "fp16"), small, 5, False),
        ("deepspeed zero2 fp16", lambda lim: check_deepspeed(ctx), small + 20, 10, False),
        ("fairscale fp16", lambda lim: check_fairscale(ctx), small, 5, False),
        ("fairscale checkpoint", lambda lim: check_fairscale_checkpoint(ctx), small, 5, False),
        ("jpeg decode", lambda lim: check_jpeg(ctx), small + 5, 10, False),
    ]
    for i, v in enumerate(s.variants):
        checks.append((v.name, lambda lim, v=v, i=i: check_throughput(ctx, v, lim - 2, keep_live=i == 0),
                       v.max_s, v.min_s, True))
        if i == 0:
            checks.append(("profile", lambda lim: check_profile(ctx), 30.0, 5.0, True))
    wanted = [w.strip() for w in args.only.split(",") if w.strip()] if args.only else None
    rows: list[Row] = []
    note = ""
    try:
        for name, fn, max_s, min_s, is_tp in checks:
            if not wanted_check(name, wanted):
                continue
            left = args.budget_s - (time.perf_counter() - t_begin)
            keep = 0.0 if is_tp or (wanted and not any(wanted_check(c[0], wanted) for c in checks if c[4])) \
                else s.tp_reserve
            limit = min(max_s, left - keep - 1)
            if limit < min_s:
                rows.append(Row(name, status=f"skipped: out of time ({max(left, 0):.0f}s of the {args.budget_s:.0f}s "
                                             f"budget left, {keep:.0f}s kept for throughput; needs {min_s:.0f}s)"))
                print(f"ROW | {name} | {rows[-1].status} |  | 0.0 |", flush=True)
            else:
                rows.append(run_check(name, lambda fn=fn, limit=limit: fn(limit), limit))
            if name == "profile" or (name == s.variants[0].name and not wanted_check("profile", wanted)):
                live = ctx.shared.pop("live", None)
                if live is not None:
                    live["teardown"]()
            write(args.out, rows, header, ctx, env)
    except Terminated:
        note = "; TERMINATED (SIGTERM) before the end"
    finally:
        live = ctx.shared.pop("live", None)
        if live is not None:
            with contextlib.suppress(Exception):
                live["teardown"]()
    header += f"; total {time.perf_counter() - t_begin:.0f}s of a {args.budget_s:.0f}s budget{note}"
    write(args.out, rows, header, ctx, env)
    missing = sorted(m for m in NOT_ON_DEVICE if m in sys.modules)
    if missing:
        print(f"warning: imported {missing}, which the device image lacks and .whl/ does not carry", flush=True)
    print("\n" + report(rows, header, ctx), flush=True)
    with contextlib.suppress(Exception):
        torch.distributed.destroy_process_group()
    if note:
        return 124
    return 1 if any(r.status.startswith("FAIL") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
