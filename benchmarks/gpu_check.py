"""One-call GPU check of bigseer's backends, SyncBN and a large-RegNetY SwAV step (issue 5).

Runs, in one process on one device, with a 1-rank process group (nccl on CUDA, gloo on CPU) so that the
distributed code paths are the ones taken:

- ``syncbn bigseer``: ``GroupSyncBatchNorm`` on the world group vs ``nn.BatchNorm2d`` (outputs, grads, stats);
- ``syncbn torch``: ``nn.SyncBatchNorm`` and torch's SyncBN autograd function (its CUDA stats kernels and
  NCCL all-gather, which ``nn.SyncBatchNorm`` itself skips on a 1-rank group) vs ``nn.BatchNorm2d`` (CUDA);
- ``fsdp bf16`` / ``fsdp fp16``: ``bigseer.parallel.setup(backend="fsdp")`` (FSDP2 on a meta-built model) +
  LARS, a few SwAV steps, weights must change (fp16: with its dynamic loss scale);
- ``deepspeed zero2 fp16``: ``ds_configs/zero2.json`` (fp16, dynamic loss scaling) + LARS (falls back to
  ``torch.optim.SGD`` with a note when bigseer refuses LARS under ZeRO); on CPU bigseer falls back to bf16;
- ``fairscale fp16``: FairScale FSDP fp16 + ShardedGradScaler (CUDA only);
- ``throughput``: images/s and MFU of a SwAV training step (FSDP2, bf16, SEER crops 2x224+4x96) of a large
  RegNetY; FLOPs from ``torch.utils.flop_counter.FlopCounterMode`` on one real step, batch sized from a
  probe step's memory, peak TFLOPS looked up from the GPU name.

Each check is isolated (try/except + a time limit) and prints one table row when it ends; the table is
printed again at the end and written to ``OUT/gpu_check.md`` (+ ``gpu_check.json``) when ``--out`` is set.

Usage (device): see ``benchmarks/gpu_check.sh``. CPU dry run:
``python benchmarks/gpu_check.py --device cpu --tiny``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

# bigseer is run from the repo root, not installed: make `import bigseer` work from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# dense bf16 tensor-core peaks (TFLOP/s) by GPU name substring, most specific first (NVIDIA datasheets)
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
    ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0),
]


@dataclass
class Sizes:
    """Sizes of one run: the backend checks' small SwAV model and the throughput model."""

    model: str
    crops: str
    batch: int
    head_dims: tuple[int, ...]
    embed_dim: int
    prototypes: int
    steps: int
    tp_model: str
    tp_crops: str
    tp_head: str  # "features": one hidden layer as wide as the trunk's features
    tp_embed: int
    tp_prototypes: int
    tp_sinkhorn: int
    tp_probe_batch: int
    tp_max_batch: int
    tp_warmup: int
    tp_steps: int


FULL = Sizes(model="regnety_800mf", crops="2x96+4x48", batch=16, head_dims=(1024,), embed_dim=128, prototypes=3000,
             steps=3, tp_model="regnety_128gf", tp_crops="2x224+4x96", tp_head="features", tp_embed=256,
             tp_prototypes=16384, tp_sinkhorn=10, tp_probe_batch=4, tp_max_batch=64, tp_warmup=3, tp_steps=10)
TINY = Sizes(model="regnety_test", crops="2x32+4x16", batch=4, head_dims=(32,), embed_dim=16, prototypes=32,
             steps=2, tp_model="regnety_test", tp_crops="2x32+4x16", tp_head="features", tp_embed=16,
             tp_prototypes=32, tp_sinkhorn=3, tp_probe_batch=2, tp_max_batch=4, tp_warmup=1, tp_steps=2)


@dataclass
class Row:
    """One table row: check name, status (``ok``, ``FAIL: ...`` or ``skipped: ...``), numbers, seconds."""

    name: str
    status: str = "ok"
    details: str = ""
    seconds: float = 0.0
    numbers: dict[str, Any] = field(default_factory=dict)


class Skip(Exception):
    """A check that cannot run here (e.g. needs CUDA): reported as ``skipped: <reason>``."""


class CheckTimeout(Exception):
    """A check ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``CheckTimeout`` in the main thread after ``seconds`` (SIGALRM; Python code only)."""
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
    """Random crop groups ``[n, B, 3, H, W]`` as ``SwAVModel.forward`` takes them."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, batch, 3, r, r, generator=g).to(device) for n, r in parse_crops(spec)]


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


def trunk_weight_snapshot(par: Any) -> dict[str, Any]:
    """Full (gathered) float state of the model, via the backend's own ``full_state_dict`` (collective)."""
    return {k: v.float().clone() for k, v in par.full_state_dict().items() if v.is_floating_point()
            and "running" not in k}


def max_change(before: dict[str, Any], after: dict[str, Any]) -> float:
    return max(float((after[k] - before[k]).abs().max()) for k in before if k in after and before[k].numel())


def run_steps(par: Any, crops: list[Any], steps: int, device: str, extra: int = 6) -> dict[str, Any]:
    """SwAV steps as the engine runs them until ``steps`` were applied (at most ``steps + extra``: fp16 dynamic
    loss scaling skips the first steps while its scale comes down from 2^16); returns losses, applied flags,
    loss scales and the largest weight change."""
    swav = par.unwrapped
    before = trunk_weight_snapshot(par)
    losses, applied, scales = [], [], []
    while sum(applied) < steps and len(applied) < steps + extra:
        par.set_lr(0.05)
        loss = par.forward(crops)
        par.backward(loss)
        applied.append(bool(par.step()))
        par.run_on_full_params(swav.normalize_prototypes)
        par.zero_grad()
        losses.append(float(loss.detach().float()))
        scales.append(par.loss_scale)
    sync(device)
    change = max_change(before, trunk_weight_snapshot(par))
    return {"losses": losses, "applied": applied, "scales": scales, "weight_change": change}


def judge_steps(res: dict[str, Any]) -> str | None:
    """None when the steps look right, else the one-line reason."""
    if not all(math.isfinite(x) for x in res["losses"]):
        return f"non-finite loss {res['losses']}"
    if not any(res["applied"]):
        return f"no step applied (all skipped; loss scales {res['scales']})"
    if not res["weight_change"] > 0:
        return "weights unchanged after applied steps"
    return None


def describe_steps(res: dict[str, Any], precision: str) -> str:
    s = (f"{precision}; loss {res['losses'][0]:.4f}->{res['losses'][-1]:.4f}; applied "
         f"{sum(res['applied'])}/{len(res['applied'])}; max |dW| {res['weight_change']:.2e}")
    if res["scales"][-1] is not None:
        s += f"; loss scale {res['scales'][0]:g}->{res['scales'][-1]:g}"
    return s


# ---- checks ------------------------------------------------------------------------------------------------
def check_syncbn_bigseer(ctx: "Ctx") -> Row:
    """bigseer GroupSyncBatchNorm on the (1-rank) world group == nn.BatchNorm2d: outputs, grads, stats."""
    import torch
    import torch.distributed as dist
    from torch import nn

    from bigseer.parallel import GroupSyncBatchNorm

    x, ref = _bn_input(ctx), nn.BatchNorm2d(_BN_C).to(ctx.device)
    sbn = GroupSyncBatchNorm(_BN_C, process_group=dist.group.WORLD).to(ctx.device)
    sbn.load_state_dict(ref.state_dict())
    errs = _bn_compare(ref, lambda t: sbn(t), sbn, x)
    row = Row("syncbn bigseer")
    row.details = f"GroupSyncBatchNorm on {ctx.device}, 1-rank group vs BatchNorm2d: max err " + _fmt_errs(errs)
    row.numbers = errs
    worst = max(errs.values())
    if not worst < 1e-4:
        row.status = f"FAIL: differs from BatchNorm2d by {worst:.2e}"
    return row


def check_syncbn_torch(ctx: "Ctx") -> Row:
    """torch nn.SyncBatchNorm (and its CUDA sync kernels via the autograd function) == nn.BatchNorm2d."""
    import torch
    import torch.distributed as dist
    from torch import nn

    if ctx.device != "cuda":
        raise Skip("needs CUDA (nn.SyncBatchNorm refuses CPU tensors)")
    x, ref = _bn_input(ctx), nn.BatchNorm2d(_BN_C).to(ctx.device)
    sbn = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(_BN_C))).to(ctx.device)[0]
    sbn.load_state_dict(ref.state_dict())
    errs = _bn_compare(ref, lambda t: sbn(t), sbn, x)
    # nn.SyncBatchNorm skips syncing on a 1-rank group; drive its autograd function directly so the CUDA
    # batch_norm_stats / gather_stats_with_counts kernels and the NCCL all-gather run too
    from torch.nn.modules._functions import SyncBatchNorm as SyncBNFunction

    fn_bn = nn.BatchNorm2d(_BN_C).to(ctx.device)
    fn_bn.load_state_dict(ref.state_dict())

    def through_fn(t: Any) -> Any:
        return SyncBNFunction.apply(t, fn_bn.weight, fn_bn.bias, fn_bn.running_mean, fn_bn.running_var, fn_bn.eps,
                                    fn_bn.momentum, dist.group.WORLD, 1)

    errs_fn = _bn_compare(ref, through_fn, fn_bn, x)
    row = Row("syncbn torch")
    row.numbers = {"module": errs, "sync_function": errs_fn}
    row.details = (f"nn.SyncBatchNorm max err {_fmt_errs(errs)}; sync autograd fn (CUDA stats kernels + NCCL) "
                   f"max err {_fmt_errs(errs_fn)}")
    worst = max(list(errs.values()) + list(errs_fn.values()))
    if not worst < 1e-4:
        row.status = f"FAIL: differs from BatchNorm2d by {worst:.2e}"
    return row


_BN_C = 16


def _bn_input(ctx: "Ctx") -> Any:
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
    diff = lambda a, b: float((a.detach().float() - b.detach().float()).abs().max())  # noqa: E731
    return {"out": diff(ya, yb), "dx": diff(xa.grad, xb.grad), "dw": diff(ref.weight.grad, mod.weight.grad),
            "db": diff(ref.bias.grad, mod.bias.grad), "mean": diff(ref.running_mean, mod.running_mean),
            "var": diff(ref.running_var, mod.running_var)}


def _fmt_errs(errs: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.1e}" for k, v in errs.items())


def _small_model(ctx: "Ctx", meta: bool = False) -> Any:
    import torch

    from bigseer.engine import build_swav_model

    s = ctx.sizes
    cfg = swav_config(s.model, s.head_dims, s.embed_dim, s.prototypes)
    torch.manual_seed(0)
    if meta:
        with torch.device("meta"):
            return build_swav_model(cfg, device="meta")
    return build_swav_model(cfg).to(ctx.device)


def check_fsdp(ctx: "Ctx", precision: str) -> Row:
    """FSDP2 (bigseer.parallel.setup backend fsdp, meta-built model) + LARS: SwAV steps in ``precision``."""
    from bigseer import parallel

    model = _small_model(ctx, meta=True)
    par = parallel.setup(model, backend="fsdp", precision=precision, optimizer_factory=lars_factory(),
                         device_type=ctx.device)
    res = run_steps(par, make_crops(ctx.sizes.crops, ctx.sizes.batch, ctx.device), ctx.sizes.steps, ctx.device)
    row = Row(f"fsdp {precision}", details=f"FSDP2 {ctx.sizes.model}, LARS; " + describe_steps(res, par.precision),
              numbers=res)
    reason = judge_steps(res)
    if reason:
        row.status = "FAIL: " + reason
    return row


def check_deepspeed(ctx: "Ctx") -> Row:
    """DeepSpeed ZeRO-2 with ds_configs/zero2.json (fp16, dynamic loss scaling) + LARS (SGD if refused)."""
    from bigseer import parallel
    from bigseer.errors import ConfigError
    from bigseer.parallel.deepspeed import load_ds_config

    try:
        import deepspeed  # noqa: F401
    except ImportError as exc:
        raise Skip(f"deepspeed not importable ({exc})") from None
    cfg = load_ds_config("zero2")
    cfg["train_micro_batch_size_per_gpu"] = ctx.sizes.batch
    note = "LARS"
    model = _small_model(ctx)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            par = parallel.setup(model, backend="deepspeed", precision="fp16", ds_config=cfg,
                                 optimizer_factory=lars_factory(), device_type=ctx.device)
        except ConfigError as exc:
            if "LARS" not in str(exc):
                raise
            note = f"SGD (LARS refused under ZeRO-2: {exc})"
            print(f"note: {note}", flush=True)
            model = _small_model(ctx)
            par = parallel.setup(model, backend="deepspeed", precision="fp16", ds_config=cfg,
                                 optimizer_factory=sgd_factory(), device_type=ctx.device)
    fallback = [str(w.message) for w in caught if "falling back" in str(w.message)]
    res = run_steps(par, make_crops(ctx.sizes.crops, ctx.sizes.batch, ctx.device), ctx.sizes.steps, ctx.device)
    prec = par.precision + (" (CPU fallback from fp16)" if fallback else "")
    row = Row("deepspeed zero2 fp16", details=f"ZeRO-2 zero2.json, {ctx.sizes.model}, {note}; "
                                             + describe_steps(res, prec), numbers={**res, "optimizer": note})
    reason = judge_steps(res)
    if reason:
        row.status = "FAIL: " + reason
    elif ctx.device == "cuda" and par.precision != "fp16":
        row.status = f"FAIL: effective precision {par.precision}, not fp16, on CUDA"
    elif ctx.device == "cuda" and res["scales"][-1] is None:
        row.status = "FAIL: no fp16 loss scale reported"
    return row


def check_fairscale(ctx: "Ctx") -> Row:
    """FairScale FSDP fp16 (+ ShardedGradScaler) + LARS: SwAV steps (CUDA only)."""
    try:
        import fairscale
        version = fairscale.__version__
    except ImportError:
        version = None
    if ctx.device != "cuda":
        raise Skip("needs CUDA" + ("" if version else " (and fairscale is not installed here)"))
    if version is None:
        raise Skip("fairscale is not installed (carry .whl: scripts/fetch_device_wheels.sh)")
    from bigseer import parallel

    model = _small_model(ctx)
    par = parallel.setup(model, backend="fairscale", precision="fp16", optimizer_factory=lars_factory(),
                         device_type=ctx.device)
    res = run_steps(par, make_crops(ctx.sizes.crops, ctx.sizes.batch, ctx.device), ctx.sizes.steps, ctx.device)
    row = Row("fairscale fp16", details=f"fairscale {version} FSDP, {ctx.sizes.model}, LARS; "
                                       + describe_steps(res, par.precision), numbers=res)
    reason = judge_steps(res)
    if reason:
        row.status = "FAIL: " + reason
    elif res["scales"][-1] is None:
        row.status = "FAIL: no fp16 loss scale reported"
    return row


def peak_tflops(name: str) -> float | None:
    """Dense bf16 peak of the GPU called ``name`` (None when unknown)."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return tflops
    return None


def check_throughput(ctx: "Ctx", budget_s: float) -> Row:
    """images/s and MFU of a SwAV step (FSDP2 bf16, 1 rank) of a large RegNetY; FLOPs by FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bigseer import parallel
    from bigseer.engine import build_swav_model
    from bigseer.models import build_regnet, count_params

    t_start = time.perf_counter()
    s = ctx.sizes
    cuda = ctx.device == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    with torch.device("meta"):
        width = build_regnet(s.tp_model, device="meta").num_features
    head = (width,) if s.tp_head == "features" else tuple(int(x) for x in s.tp_head.split(","))
    cfg = swav_config(s.tp_model, head, s.tp_embed, s.tp_prototypes, s.tp_sinkhorn)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = build_swav_model(cfg, device="meta")
    n_params = count_params(model)
    par = parallel.setup(model, backend="fsdp", precision="bf16", optimizer_factory=lars_factory(0.01),
                         device_type=ctx.device)

    def step(crops: list[Any]) -> Any:
        loss = par.forward(crops)
        par.backward(loss)
        par.step()
        par.run_on_full_params(model.normalize_prototypes)
        par.zero_grad()
        return loss

    # batch: from the memory of probe steps at batches b and 2b, after a first step has created the optimizer
    # state: per image = (peak(2b) - peak(b)) / b, the rest is fixed (or --batch)
    batch = ctx.batch
    per_image = None
    if batch is None:
        b = s.tp_probe_batch
        batch = b
        if cuda:
            step(make_crops(s.tp_crops, b, ctx.device))
            peaks = []
            for n in (b, 2 * b):
                sync(ctx.device)
                torch.cuda.reset_peak_memory_stats()
                step(make_crops(s.tp_crops, n, ctx.device))
                sync(ctx.device)
                peaks.append(torch.cuda.max_memory_allocated())
            per_image = max((peaks[1] - peaks[0]) / b, 1.0)
            fixed = peaks[0] - b * per_image
            budget = 0.75 * (torch.cuda.mem_get_info()[0] + torch.cuda.memory_reserved()) - fixed
            fit = int(budget / per_image)
            batch = max(b, min(s.tp_max_batch, fit // 8 * 8 if fit >= 8 else fit))
        else:
            batch = s.tp_max_batch
    oom_note = ""
    while True:  # FLOP count + warm-up; on CUDA OOM halve the batch (at most twice)
        try:
            crops = make_crops(s.tp_crops, batch, ctx.device)
            # FLOPs of one full training step (forward + backward) at this batch, counted by torch
            with FlopCounterMode(display=False) as counter:
                loss = par.forward(crops)
                par.backward(loss)
            par.zero_grad()
            flops = float(counter.get_total_flops())
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            for _ in range(s.tp_warmup):
                step(crops)
            sync(ctx.device)
            break
        except torch.cuda.OutOfMemoryError:
            if not cuda or oom_note.count("OOM") >= 2 or batch <= 1:
                raise
            oom_note += f" (OOM at batch {batch}, halved)"
            crops = loss = None
            par.zero_grad()
            torch.cuda.empty_cache()
            batch //= 2
    left = budget_s - (time.perf_counter() - t_start)
    t0 = time.perf_counter()
    done, loss_val = 0, float("nan")
    while done < s.tp_steps:
        loss = step(crops)
        done += 1
        if done < s.tp_steps and (time.perf_counter() - t0) * (done + 1) / done > left * 0.9:
            break  # the next step would run out of this check's time: stop timing here
    sync(ctx.device)
    dt = time.perf_counter() - t0
    loss_val = float(loss.detach().float())
    img_s = batch * done / dt
    achieved = flops * done / dt / 1e12
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = peak_tflops(name) if cuda else None
    mfu = achieved / peak if peak else None
    mem_gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    numbers = {"model": s.tp_model, "params": n_params, "head": list(head), "prototypes": s.tp_prototypes,
               "crops": s.tp_crops, "batch": batch, "timed_steps": done, "step_s": dt / done, "images_per_s": img_s,
               "flops_per_step": flops, "achieved_tflops": achieved, "gpu": name, "peak_bf16_tflops": peak,
               "mfu": mfu, "max_memory_allocated_gib": mem_gib, "probe_bytes_per_image": per_image,
               "loss": loss_val}
    row = Row("throughput", numbers=numbers)
    row.details = (f"{s.tp_model} ({n_params / 1e6:.4g}M params, head {list(head)}x{s.tp_prototypes}) FSDP2 bf16 "
                   f"LARS, crops {s.tp_crops}, batch {batch}{oom_note}: {img_s:.1f} img/s "
                   f"({dt / done * 1e3:.0f} ms/step, "
                   f"{done} timed steps after {s.tp_warmup} warm-up), {flops / 1e12:.4g} TFLOP/step "
                   f"(FlopCounterMode, fwd+bwd), {achieved:.4g} TFLOP/s achieved, MFU "
                   + (f"{mfu * 100:.1f}% of {peak:.0f} (bf16 dense, {name})" if mfu is not None
                      else f"n/a ({name}: no peak known)")
                   + (f", max_memory_allocated {mem_gib:.1f} GiB" if mem_gib is not None else ""))
    if not (math.isfinite(loss_val) and img_s > 0 and flops > 0):
        row.status = f"FAIL: loss {loss_val}, img/s {img_s}, flops {flops}"
    return row


# ---- driver ------------------------------------------------------------------------------------------------
@dataclass
class Ctx:
    device: str
    sizes: Sizes
    batch: int | None


def run_check(name: str, fn: Callable[[], Row], limit_s: float) -> Row:
    """Run one check under a time limit; any exception becomes a FAIL row (Skip a skipped one)."""
    t0 = time.perf_counter()
    print(f"--- {name} (limit {limit_s:.0f}s)", flush=True)
    try:
        with time_limit(limit_s):
            row = fn()
    except Skip as exc:
        row = Row(name, status=f"skipped: {exc}")
    except BaseException as exc:  # noqa: BLE001 - one failing check must not hide the others
        if isinstance(exc, KeyboardInterrupt):
            raise
        traceback.print_exc()
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())
        row = Row(name, status=f"FAIL: {msg[:300]}")
    row.seconds = time.perf_counter() - t0
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(f"ROW | {row.name} | {row.status} | {row.details} | {row.seconds:.1f} |", flush=True)
    return row


def table(rows: list[Row], header: str) -> str:
    esc = lambda s: str(s).replace("|", "/").replace("\n", " ")  # noqa: E731
    lines = [header, "", "| check | status | numbers | s |", "| --- | --- | --- | --- |"]
    lines += [f"| {esc(r.name)} | {esc(r.status)} | {esc(r.details)} | {r.seconds:.1f} |" for r in rows]
    return "\n".join(lines) + "\n"


def environment(device: str) -> str:
    import torch

    parts = [f"torch {torch.__version__}", f"python {sys.version.split()[0]}"]
    if device == "cuda":
        parts.insert(0, f"{torch.cuda.get_device_name()} (cuda {torch.version.cuda})")
    for mod in ("deepspeed", "fairscale"):
        try:
            parts.append(f"{mod} {__import__(mod).__version__}")
        except Exception:  # noqa: BLE001
            parts.append(f"{mod} missing")
    return ", ".join(parts)


def write(out: str | None, rows: list[Row], header: str) -> None:
    if not out:
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, "gpu_check.md").write_text(table(rows, header))
    Path(out, "gpu_check.json").write_text(json.dumps(
        [{"name": r.name, "status": r.status, "details": r.details, "seconds": r.seconds, "numbers": r.numbers}
         for r in rows], indent=1, default=str))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (CPU dry run)")
    ap.add_argument("--out", default=os.environ.get("OUT") or None, help="folder for gpu_check.md/.json")
    ap.add_argument("--budget-s", type=float, default=400.0, help="total time for all checks (default 400)")
    ap.add_argument("--tp-model", default=None, help="throughput trunk preset (default regnety_128gf)")
    ap.add_argument("--batch", type=int, default=None, help="throughput batch (default: sized by a probe step)")
    ap.add_argument("--only", default=None, help="comma-separated check names to run (default all)")
    args = ap.parse_args(argv)

    t_begin = time.perf_counter()
    if args.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before any deepspeed import
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False (use --device cpu for a dry run)")
        return 2
    sizes = TINY if args.tiny else FULL
    if args.tp_model:
        sizes = Sizes(**{**sizes.__dict__, "tp_model": args.tp_model})
    ctx = Ctx(args.device, sizes, args.batch)
    init_one_rank(args.device)
    header = f"gpu_check: {environment(args.device)}; 1-rank process group"
    print(header, flush=True)

    small = 30.0 if args.tiny else 75.0
    checks: list[tuple[str, Callable[[], Row], float]] = [
        ("syncbn bigseer", lambda: check_syncbn_bigseer(ctx), small),
        ("syncbn torch", lambda: check_syncbn_torch(ctx), small),
        ("fsdp bf16", lambda: check_fsdp(ctx, "bf16"), small),
        ("fsdp fp16", lambda: check_fsdp(ctx, "fp16"), small),
        ("deepspeed zero2 fp16", lambda: check_deepspeed(ctx), small + 15),
        ("fairscale fp16", lambda: check_fairscale(ctx), small),
    ]
    wanted = set(args.only.split(",")) if args.only else None
    rows: list[Row] = []
    for name, fn, limit in checks:
        if wanted and name not in wanted:
            continue
        left = args.budget_s - (time.perf_counter() - t_begin)
        rows.append(run_check(name, fn, min(limit, max(left - 60, 5))))
        write(args.out, rows, header)
    if not wanted or "throughput" in wanted:
        left = args.budget_s - (time.perf_counter() - t_begin)
        if left < 20:
            rows.append(Row("throughput", status=f"skipped: only {left:.0f}s of the budget left"))
        else:
            # the limit is the hard stop; the timed loop itself stops early to fit within ~left - 10 s
            rows.append(run_check("throughput", lambda: check_throughput(ctx, left - 10), left))
    header += f"; total {time.perf_counter() - t_begin:.0f}s"
    write(args.out, rows, header)
    print("\n" + table(rows, header), flush=True)
    with contextlib.suppress(Exception):
        torch.distributed.destroy_process_group()
    return 1 if any(r.status.startswith("FAIL") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
