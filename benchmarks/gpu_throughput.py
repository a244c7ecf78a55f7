"""Images/s and MFU of one SwAV training step of a large RegNetY (benchmarks/gpu_check.py's throughput rows).

SEER head, FSDP2 bf16, activation checkpointing, LARS; channels_last and compile as the variant says; the
batch is the largest a doubling probe fits (OOM-safe). FLOPs are counted by ``torch.utils.flop_counter`` on
a real step (recompute included: what the engine logs) and on its forward (model FLOPs = 3 x forward); MFU via
``bigseer.perf`` against the measured bf16 matmul peak and the GPU's spec dense bf16 peak; peak memory beside
``bigseer.plan``'s plan of the same run.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

from gpu_harness import free_memory, sync

Clock = Callable[[], float]
# dense bf16 tensor-core peaks (TFLOP/s) by GPU name substring, most specific first (NVIDIA datasheets);
# bigseer.perf measures the achievable peak, this is the datasheet's column beside it
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200 NVL", 835.0), ("H200", 989.0),
    ("GH200", 989.0), ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0),
]
MFU_PROFILE_BELOW = 0.35


@dataclass(frozen=True)
class Variant:
    """One throughput row: trunk preset, eager / compile, channels_last, whether it probes its batch."""

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
    """Sizes and limits of one run (FULL on the GPU, TINY for the CPU dry run)."""

    crops: str
    head_dims: tuple[int, ...]
    embed: int
    prototypes: int
    sinkhorn: int
    start_batch: int
    max_batch: int
    max_step_s: float  # the probe does not double past a step this long
    probe_s: float  # seconds the probe may take
    warmup: int
    min_steps: int
    max_steps: int
    time_s: float  # timed steps run until this much time (and min_steps) is reached
    profile_steps: int
    variants: tuple[Variant, ...]
    peak_n: int | None = None  # matmul size of bigseer.perf's peak measurement (None: its default)


FULL = Sizes("2x224+4x96", (8192, 8192), 256, 16384, 10, start_batch=8, max_batch=256, max_step_s=3.0, probe_s=30.0,
             warmup=1, min_steps=4, max_steps=20, time_s=8.0, profile_steps=2,
             variants=(Variant("regnety_128gf", "eager", True, probe=True, min_s=40, max_s=90),
                       Variant("regnety_128gf", "eager", False, min_s=30, max_s=45),
                       Variant("regnety_128gf", "compile", True, min_s=60, max_s=200),
                       Variant("regnety_256gf", "eager", True, probe=True, min_s=45, max_s=80)))
# no time-based stop in the dry run: the probe doubles to max_batch and a fixed number of steps is timed
TINY = Sizes("2x64+4x32", (32,), 16, 32, 3, start_batch=4, max_batch=8, max_step_s=math.inf, probe_s=math.inf,
             warmup=1, min_steps=2, max_steps=2, time_s=0.0, profile_steps=1,
             variants=(Variant("regnety_test", "eager", True, probe=True, min_s=3, max_s=60),
                       Variant("regnety_test", "eager", False, min_s=3, max_s=60),
                       Variant("regnety_test", "compile", True, min_s=3, max_s=90),
                       Variant("regnety_tiny", "eager", True, probe=True, min_s=3, max_s=60)),
             peak_n=256)  # bf16 matmuls are emulated on most CPUs: 1024^3 takes seconds


@dataclass
class Ctx:
    """One benchmark run: device, sizes, options, and what one row hands the next."""

    device: str
    sizes: Sizes
    batch: int | None = None
    compile_backend: str = "inductor"
    force_profile: bool = False
    profile_below: float = MFU_PROFILE_BELOW
    out: str | None = None
    shared: dict[str, Any] = field(default_factory=dict)  # live model of the first variant, batches, FLOPs
    throughput: list[dict[str, Any]] = field(default_factory=list)
    profile: dict[str, Any] | None = None


def peak_tflops(name: str) -> float | None:
    """Spec dense bf16 peak of the GPU called ``name`` (None when unknown)."""
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS if key.lower() in name.lower()), None)


def make_crops(spec: str, batch: int, device: str, seed: int = 0) -> list[Any]:
    """Random crop groups ``[n, B, 3, H, W]`` as ``SwAVModel.forward`` takes them, made on ``device``."""
    import torch

    from bigseer.plan import parse_crops

    g = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(n, batch, 3, r, r, generator=g, device=device) for n, r in parse_crops(spec)]


def probe_batch(step_at: Callable[[int], tuple[float, float | None]], start: int, max_batch: int,
                mem_total: float | None, max_step_s: float, budget_s: float, mem_frac: float = 0.9,
                repeat: int = 2, clock: Clock = time.perf_counter) -> tuple[int, list[dict[str, Any]], str, bool]:
    """The largest batch (``start`` doubled, at most ``max_batch``) whose step runs, found quickly.

    ``step_at(b)`` runs one step at batch ``b``: (seconds, peak memory bytes or None), or raises
    ``torch.cuda.OutOfMemoryError``. Each batch runs ``repeat`` steps (the first at a new shape autotunes; the
    fastest counts). Doubling stops at ``max_batch``, at an OOM, when the peak extrapolated to ``2b`` exceeds
    ``mem_frac * mem_total``, when a step at ``2b`` would take over ``max_step_s``, or when ``budget_s`` (by
    ``clock``) would be spent; an OOM at ``start`` halves it. Returns (batch, trials, why, OOM seen)."""
    import torch

    t0, trials, good, oom, b = clock(), [], None, False, start
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
        peak = max((r[1] for r in runs if r[1] is not None), default=None)
        trials.append({"batch": b, "s": secs, "peak_gib": None if peak is None else peak / 2**30})
        good = b
        why = _stop_reason(trials, b, secs, peak, oom, max_batch, mem_total, mem_frac, max_step_s,
                           clock() - t0 + (repeat + 1) * 2 * secs > budget_s, budget_s)
        if why:
            return good, trials, why, oom
        b *= 2


def _stop_reason(trials: list[dict[str, Any]], b: int, secs: float, peak: float | None, oom: bool, max_batch: int,
                 mem_total: float | None, mem_frac: float, max_step_s: float, over_budget: bool,
                 budget_s: float) -> str | None:
    """Why the probe stops doubling after a step at ``b`` ran, or None."""
    if oom:  # came down from an OOM at 2b: never try it again
        return f"OOM at {2 * b}"
    if 2 * b > max_batch:
        return f"max batch {max_batch}"
    if peak is not None and mem_total:
        prev = [t for t in trials[:-1] if not t.get("oom") and t.get("peak_gib") is not None]
        per = (peak - prev[-1]["peak_gib"] * 2**30) / (b - prev[-1]["batch"]) if prev else peak / b
        if peak + per * b > mem_frac * mem_total:
            return f"{2 * b} would need ~{(peak + per * b) / 2**30:.0f} GiB > {mem_frac:.0%} of {mem_total / 2**30:.0f}"
    if 2 * secs > max_step_s:
        return f"a step at {2 * b} would take ~{2 * secs:.1f}s > {max_step_s:g}s"
    if over_budget:
        return f"probe time {budget_s:g}s"
    return None


def time_steps(timed: Callable[[], float], min_steps: int, max_steps: int, time_s: float, deadline: float,
               clock: Clock = time.perf_counter) -> tuple[list[float], bool]:
    """Step times of ``timed()`` until ``max_steps``, or ``min_steps`` and ``time_s`` seconds of steps, or
    until another step would pass ``deadline - 3`` (by ``clock``); (times, whether the deadline stopped it)."""
    times: list[float] = []
    while True:
        times.append(timed())
        if len(times) >= max_steps or (len(times) >= min_steps and sum(times) >= time_s):
            return times, False
        if clock() + 1.5 * times[-1] > deadline - 3:
            return times, True


class Bench:
    """One variant's model (FSDP2 bf16, checkpointing all, LARS) and its steps on random crops."""

    def __init__(self, ctx: Ctx, v: Variant) -> None:
        self.ctx, self.v, self.dev = ctx, v, ctx.device
        self._crops: dict[int, list[Any]] = {}
        self.build()

    def build(self) -> None:
        """(Re)build the model: meta-built SwAV model of the variant wrapped by ``bigseer.parallel.setup``."""
        import torch
        from torch import nn

        from bigseer import parallel
        from bigseer.config import PretrainConfig
        from bigseer.models import count_params
        from bigseer.trainer import build_swav_model, lars_factory

        self.par = self.model = None
        free_memory(self.dev)
        s, v = self.ctx.sizes, self.v
        cfg = PretrainConfig(model=v.model, head_dims=s.head_dims, embed_dim=s.embed, num_prototypes=s.prototypes,
                             sinkhorn_iters=s.sinkhorn, crops_for_assign=(0, 1))
        torch.manual_seed(0)
        with torch.device("meta"):
            self.model = build_swav_model(cfg, device="meta")
        self.n_params = count_params(self.model)
        patch: Any = contextlib.nullcontext()
        if v.mode == "compile" and self.ctx.compile_backend != "inductor":
            real = nn.Module.compile
            backend = self.ctx.compile_backend
            patch = mock.patch.object(nn.Module, "compile", lambda m, *a, **k: real(m, *a, **{"backend": backend, **k}))
        with patch:
            self.par = parallel.setup(self.model, backend="fsdp", precision="bf16", checkpointing="all",
                                      channels_last=v.channels_last, compile=v.mode == "compile",
                                      optimizer_factory=lars_factory(cfg, lr=0.01), device_type=self.dev)

    def crops(self, batch: int) -> list[Any]:
        if batch not in self._crops:
            self._crops = {batch: make_crops(self.ctx.sizes.crops, batch, self.dev)}
        return self._crops[batch]

    def step(self, batch: int) -> Any:
        """One SwAV training step as the engine runs it (``bigseer.trainer.swav_step``); the loss."""
        from bigseer.trainer import swav_step

        return swav_step(self.par, self.crops(batch))[0]

    def timed(self, batch: int, reset_peak: bool = True) -> tuple[float, float | None]:
        """(seconds, CUDA peak memory bytes or None) of one step."""
        import torch

        cuda = self.dev == "cuda"
        sync(self.dev)
        if cuda and reset_peak:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        self.step(batch)
        sync(self.dev)
        return time.perf_counter() - t0, float(torch.cuda.max_memory_allocated()) if cuda else None

    def count_flops(self, batch: int) -> tuple[float, float]:
        """(FLOPs of one training step, as the engine's FlopMeter counts them; of a forward alone)."""
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from bigseer.perf import FlopMeter
        from bigseer.trainer import swav_step

        meter = FlopMeter(1.0)
        swav_step(self.par, self.crops(batch), measure=meter.count())
        fwd = FlopCounterMode(display=False)
        with fwd, torch.no_grad():
            self.par.forward(self.crops(batch))
        return float(meter.step_flops or 0.0), float(fwd.get_total_flops())

    def close(self) -> None:
        self.par = self.model = None
        self._crops = {}
        free_memory(self.dev)
