"""``--channels_last auto`` / ``--compile auto``: measured at start-up, not guessed.

Entry point (all ranks call it, before ``bigseer.parallel.setup`` wraps the model)::

    choice = choose_speedups(regnet_factory(cfg.model, device), cfg.crops, cfg.batch_size, precision, device,
                             channels_last=cfg.channels_last, compile=cfg.compile, model=cfg.model,
                             cache_dir=cfg.output_dir, sharded=backend == "fsdp",
                             checkpointing=cfg.checkpointing)
    parallel.setup(model, ..., channels_last=choice.channels_last, compile=choice.compile)

What ``auto`` means:

- ``on`` / ``off`` pass through unmeasured; nothing is logged, no collective.
- ``auto`` on CUDA: rank 0 of ``group`` times the run's own trunk, forward + backward, on the run's input
  shapes (one trunk call per run of equal-resolution crops, ``[count * batch, 3, size, size]``, as
  ``SwAVModel.features`` calls it), per-rank batch, precision (autocast), activation checkpointing and
  sharding flag, once per candidate variant: NCHW / NHWC when ``channels_last`` is auto (else its fixed
  value), eager / compiled when ``compile`` is auto (else its fixed value). Each variant is a fresh trunk
  switched by the real switch code, :func:`bigseer.parallel.apply_speedups`, so the probe times exactly what
  the run will execute. ``warmup`` untimed iterations (a compiled variant compiles in the first:
  ``--compile auto`` is the user's consent to pay one compile per compiled variant), then up to ``iters``
  timed ones; all but the first iteration count against the variant's share of ``budget_s`` and stop once
  it is spent (one warm-up and one timed iteration always run); the median of the timed ones counts. The
  fastest variant wins (ties go to the earlier one in ``VARIANTS`` order, i.e. to "off"). The choice and
  every timing are broadcast from rank 0, so all ranks apply the same switches and log the same line.
  Not mirrored: SyncBN (plain BN in the probe), FSDP2's bf16 parameter casting (autocast in the probe), the
  head. The probe holds one whole trunk with its gradients: where that does not fit (seer_10b on one GPU)
  every variant fails and ``auto`` stays off.
- ``auto`` on CPU: off, unmeasured (as before). The CPU path is for tests and development runs; every
  engine test runs with the default ``channels_last=auto`` and would pay the probe (and get a
  timing-dependent choice, i.e. timing-dependent numerics). ``measure_on_cpu=True`` measures anyway (the
  tests of this module use it).
- A probe that fails (out of memory, a compile error) on every variant leaves ``auto`` off; the run goes on.

Results are cached in ``cache_dir/speedups.json`` (written atomically by rank 0), keyed by device name (GPU
name; ``cpu: <model name>`` on CPU), model, input shapes, per-rank batch, precision, torch version,
sharding, checkpointing and the two switch values, so a restart into the same output directory does not
measure again.

The probe never touches the run's state: it works on fresh trunks (``trunk_factory()`` per variant, or a
deep copy of the trunk passed in), draws its inputs from its own generator, and forks the CPU / CUDA RNG
around everything (a factory that draws init seeds from torch's default generator included).
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import math
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, NamedTuple, cast

import torch
from torch import nn

from bigseer.distributed import Group, all_reduce_sum, get_rank, get_world_size
from bigseer.errors import ConfigError

log = logging.getLogger("bigseer")

CACHE_NAME = "speedups.json"
CACHE_FORMAT = 1
# candidate variants in preference order on ties: (channels_last, compile)
VARIANTS: tuple[tuple[bool, bool], ...] = ((False, False), (True, False), (False, True), (True, True))
SOURCES = ("fixed", "measured", "cache", "failed", "unmeasured")
_NOT_RUN, _FAILED = -1.0, -2.0  # timing slots in the broadcast vector


class Speedups(NamedTuple):
    """The switches to hand to ``bigseer.parallel.setup`` and how they were decided.

    ``report``: ``source`` (one of ``SOURCES``), ``timings_ms`` ({variant name: median ms per trunk
    forward+backward} for the measured variants), ``failed`` (variant names whose probe raised), ``line``
    (the logged line; "" when nothing was auto), ``cache`` (the cache file or None)."""

    channels_last: bool
    compile: bool
    report: dict[str, Any]


def variant_name(channels_last: bool, compile: bool) -> str:
    return f"{'NHWC' if channels_last else 'NCHW'}{' compiled' if compile else ' eager'}"


def input_shapes(crops: Any, batch: int) -> list[tuple[int, int, int, int]]:
    """The trunk's input shapes for one step: consecutive crop groups of equal size merged, as
    ``SwAVModel.features`` calls the trunk once per resolution run."""
    from bigseer.data.multicrop import parse_crops

    runs: list[list[int]] = []
    for g in parse_crops(crops):
        if runs and runs[-1][1] == g.size:
            runs[-1][0] += g.count
        else:
            runs.append([g.count, g.size])
    return [(count * batch, 3, size, size) for count, size in runs]


def device_name(device: torch.device) -> str:
    """The cache's device key: the GPU's name on CUDA, ``cpu: <model name>`` elsewhere."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{device.type}: {model or platform.processor() or platform.machine()}"


def regnet_factory(model: Any, device: Any, zero_init_last: bool = True) -> Callable[[], nn.Module]:
    """A trunk factory for :func:`choose_speedups`: the run's RegNet built on ``meta`` and materialised on
    ``device`` with a fixed init seed (no draw from torch's generator; real-looking values, no denormals)."""
    from bigseer.models import build_regnet

    def build() -> nn.Module:
        return build_regnet(model, device="meta", zero_init_last=zero_init_last).init_weights(device, seed=0)

    return build


def choose_speedups(trunk: nn.Module | Callable[[], nn.Module], crops: Any, batch: int, precision: str,
                    device: torch.device | str, *, channels_last: str, compile: str, model: str,
                    cache_dir: str | Path | None, sharded: bool = False, checkpointing: Any = "none",
                    clock: Callable[[], float] = time.perf_counter, budget_s: float = 3.0, warmup: int = 2,
                    iters: int = 5, measure_on_cpu: bool = False, group: Group = None) -> Speedups:
    """Resolve ``channels_last`` / ``compile`` (``auto`` | ``on`` | ``off``) for this run; collective over
    ``group`` when something is measured or read from the cache (see module doc).

    ``trunk``: a trunk module (deep-copied per variant; never modified) or a zero-argument factory returning
    a fresh trunk (called once per variant; needed for a trunk on ``meta``). ``crops``: a crop spec or a
    list of ``CropGroup`` (``bigseer.data.multicrop.parse_crops``); ``batch``: per-rank batch. ``sharded``:
    the run's parameters are sharded (FSDP), as ``apply_speedups`` takes it. ``clock``: seconds, read around
    each timed iteration (after a CUDA synchronize). ``budget_s``: timed seconds for all variants together."""
    from bigseer.parallel import SWITCHES
    from bigseer.parallel.checkpointing import parse_checkpointing
    from bigseer.parallel.precision import check_precision

    for name, value in (("channels_last", channels_last), ("compile", compile)):
        if value not in SWITCHES:
            raise ConfigError(f"{name}={value!r} is invalid: choose one of {', '.join(SWITCHES)}")
    check_precision(precision)
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    checkpointing = parse_checkpointing(checkpointing)
    shapes = input_shapes(crops, batch)
    cl_options = (False, True) if channels_last == "auto" else (channels_last == "on",)
    co_options = (False, True) if compile == "auto" else (compile == "on",)
    candidates = [v for v in VARIANTS if v[0] in cl_options and v[1] in co_options]
    report: dict[str, Any] = {"source": "fixed", "timings_ms": {}, "failed": [], "line": "", "cache": None}
    if len(candidates) == 1:
        return Speedups(candidates[0][0], candidates[0][1], report)
    if isinstance(trunk, nn.Module):
        if any(p.is_meta for p in trunk.parameters()):
            raise ConfigError("choose_speedups: the trunk is on the meta device; pass a factory "
                              "(bigseer.parallel.autotune.regnet_factory) to measure it")
    fixed_cl, fixed_co = candidates[0]  # the "off" end of every auto switch: what an unmeasured auto means
    cache = Path(cache_dir) / CACHE_NAME if cache_dir is not None else None
    report["cache"] = str(cache) if cache is not None else None
    if device.type != "cuda" and not measure_on_cpu:
        report["source"] = "unmeasured"
        report["line"] = (f"speedups: {_switches_text(channels_last, compile, fixed_cl, fixed_co)} "
                          f"(not measured on {device.type}: auto measures on CUDA, off elsewhere)")
        log.info("%s", report["line"])
        return Speedups(fixed_cl, fixed_co, report)

    key = {"device": device_name(device) if get_rank(group) == 0 else "", "model": str(model),
           "inputs": [list(s) for s in shapes], "batch": int(batch), "precision": precision,
           "torch": torch.__version__, "sharded": bool(sharded), "checkpointing": checkpointing,
           "channels_last": channels_last, "compile": compile}
    key = json.loads(json.dumps(key))  # as the cache file holds it (tuples as lists) so that == matches
    # rank 0 decides (cache or probe); the vector [channels_last, compile, source, t per VARIANTS...] is
    # summed over ranks with zeros elsewhere: a broadcast every rank agrees with
    vec = torch.zeros(3 + len(VARIANTS), dtype=torch.float64)
    if get_rank(group) == 0:
        vec = _decide(trunk, shapes, precision, device, candidates, key, cache, sharded, checkpointing, clock,
                      budget_s, warmup, iters)
    vec = _broadcast(vec, group, device)
    choice_cl, choice_co, source = bool(vec[0] > 0.5), bool(vec[1] > 0.5), SOURCES[int(round(float(vec[2])))]
    timings = {variant_name(*v): float(vec[3 + i]) for i, v in enumerate(VARIANTS) if vec[3 + i] >= 0}
    report.update(source=source, timings_ms=timings,
                  failed=[variant_name(*v) for i, v in enumerate(VARIANTS) if vec[3 + i] == _FAILED])
    report["line"] = _line(report, channels_last, compile, choice_cl, choice_co, key, shapes)
    (log.warning if source == "failed" else log.info)("%s", report["line"])
    return Speedups(choice_cl, choice_co, report)


def _switches_text(cl_value: str, co_value: str, cl: bool, co: bool) -> str:
    parts = [f"channels_last {cl_value} -> {'on' if cl else 'off'}", f"compile {co_value} -> {'on' if co else 'off'}"]
    return ", ".join(parts)


def _line(report: dict[str, Any], cl_value: str, co_value: str, cl: bool, co: bool, key: dict[str, Any],
          shapes: list[tuple[int, int, int, int]]) -> str:
    times = ", ".join(f"{n} {t:.2f} ms" for n, t in report["timings_ms"].items())
    failed = f"; failed: {', '.join(report['failed'])}" if report["failed"] else ""
    where = {"measured": f"measured, cached in {report['cache']}" if report["cache"] else "measured",
             "cache": f"from the cache {report['cache']}",
             "failed": "every probe failed: auto stays off"}.get(report["source"], report["source"])
    inputs = " + ".join(f"{n}x3x{h}x{w}" for n, _, h, w in shapes)
    return (f"speedups: {_switches_text(cl_value, co_value, cl, co)} (trunk forward+backward per step, "
            f"{key['model']}, inputs {inputs}, {key['precision']}: {times or 'no timing'}{failed}; {where})")


def _broadcast(vec: torch.Tensor, group: Group, device: torch.device) -> torch.Tensor:
    """Rank 0's ``vec`` on every rank (other ranks pass zeros)."""
    if get_world_size(group) == 1:
        return vec
    import torch.distributed as dist

    on = device if "nccl" in str(dist.get_backend(group)).lower() else torch.device("cpu")
    return all_reduce_sum(vec.to(on), group).cpu()


def _decide(trunk: Any, shapes: list[tuple[int, int, int, int]], precision: str, device: torch.device,
            candidates: list[tuple[bool, bool]], key: dict[str, Any], cache: Path | None, sharded: bool,
            checkpointing: Any, clock: Callable[[], float], budget_s: float, warmup: int,
            iters: int) -> torch.Tensor:
    """Rank 0: the broadcast vector from the cache, else from measuring; never raises (the other ranks wait
    in the broadcast)."""
    try:
        return _decide_or_raise(trunk, shapes, precision, device, candidates, key, cache, sharded, checkpointing,
                                clock, budget_s, warmup, iters)
    except Exception as exc:
        log.warning("speedups: the probe failed: %s", (str(exc).strip().splitlines() or [type(exc).__name__])[0])
        vec = torch.full((3 + len(VARIANTS),), _NOT_RUN, dtype=torch.float64)
        vec[0], vec[1], vec[2] = float(candidates[0][0]), float(candidates[0][1]), SOURCES.index("failed")
        return vec


def _decide_or_raise(trunk: Any, shapes: list[tuple[int, int, int, int]], precision: str, device: torch.device,
                     candidates: list[tuple[bool, bool]], key: dict[str, Any], cache: Path | None, sharded: bool,
                     checkpointing: Any, clock: Callable[[], float], budget_s: float, warmup: int,
                     iters: int) -> torch.Tensor:
    vec = torch.full((3 + len(VARIANTS),), _NOT_RUN, dtype=torch.float64)
    hit = _read_cache(cache, key)
    if hit is not None and (hit["channels_last"], hit["compile"]) in candidates:
        vec[0], vec[1], vec[2] = float(hit["channels_last"]), float(hit["compile"]), SOURCES.index("cache")
        for i, v in enumerate(VARIANTS):
            t = hit.get("timings_ms", {}).get(variant_name(*v))
            if isinstance(t, (int, float)):
                vec[3 + i] = float(t)
        return vec
    times: dict[tuple[bool, bool], float] = {}
    with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
        for v in candidates:
            try:
                times[v] = _time_variant(trunk, shapes, precision, device, v, sharded, checkpointing, clock,
                                         budget_s / len(candidates), warmup, iters, len(candidates))
            except Exception as exc:  # OOM, compile errors: this variant is out, the run goes on
                log.warning("speedups: probing %s failed: %s", variant_name(*v),
                            (str(exc).strip().splitlines() or [type(exc).__name__])[0])
                times[v] = math.inf
            finally:
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    for i, v in enumerate(VARIANTS):
        if v in times:
            vec[3 + i] = times[v] * 1e3 if math.isfinite(times[v]) else _FAILED
    ok = [v for v in candidates if math.isfinite(times[v])]
    if not ok:
        vec[0], vec[1], vec[2] = float(candidates[0][0]), float(candidates[0][1]), SOURCES.index("failed")
        return vec
    best = min(ok, key=lambda v: times[v])  # min keeps the first of equal times: candidates are in VARIANTS order
    vec[0], vec[1], vec[2] = float(best[0]), float(best[1]), SOURCES.index("measured")
    _write_cache(cache, key, best, {variant_name(*v): float(vec[3 + VARIANTS.index(v)]) for v in candidates
                                    if vec[3 + VARIANTS.index(v)] >= 0})
    return vec


def _fresh_trunk(trunk: Any, device: torch.device) -> nn.Module:
    if isinstance(trunk, nn.Module):
        return copy.deepcopy(trunk).to(device)
    return trunk().to(device)


def _time_variant(trunk: Any, shapes: list[tuple[int, int, int, int]], precision: str, device: torch.device,
                  variant: tuple[bool, bool], sharded: bool, checkpointing: Any, clock: Callable[[], float],
                  budget_s: float, warmup: int, iters: int, n_variants: int) -> float:
    """Median seconds of one trunk forward+backward over ``shapes`` for ``variant`` (the real switch code)."""
    from bigseer.parallel import apply_speedups
    from bigseer.parallel.checkpointing import apply_checkpointing
    from bigseer.parallel.precision import autocast

    probe = _fresh_trunk(trunk, device)
    probe.train()
    apply_checkpointing(probe, checkpointing)
    cl, co = variant
    if co:
        _widen_dynamo_limits(probe, n_variants)
    apply_speedups(probe, probe, channels_last=cl, compile=co, sharded=sharded)
    gen = torch.Generator(device=device).manual_seed(0)
    inputs = [torch.randn(s, generator=gen, device=device) for s in shapes]
    params = [p for p in probe.parameters() if p.requires_grad]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step() -> None:
        for p in params:
            p.grad = None
        with autocast(precision, device.type):
            loss = torch.stack([probe(x).float().mean() for x in inputs]).sum()
        loss.backward()

    def timed() -> float:
        t0 = clock()
        step()
        sync()
        return clock() - t0

    # the first warm-up iteration is free (allocation, cuDNN's choice, a compile); later warm-up and timed
    # iterations count against this variant's share of the budget, but one timed iteration always runs
    if warmup > 0:
        step()
        sync()
    spent = 0.0
    for _ in range(warmup - 1):
        if spent >= budget_s:
            break
        spent += timed()
    times: list[float] = []
    while len(times) < max(1, iters) and (not times or spent < budget_s):
        times.append(timed())
        spent += times[-1]
    return statistics.median(times)  # the probe trunk and its inputs go with this frame


def _widen_dynamo_limits(trunk: nn.Module, n_variants: int) -> None:
    """Compiled probe variants leave their graphs in dynamo's cache (the run reuses the winner's, so it does
    not compile again): raise the recompile limits ``apply_speedups`` sets (4 per block + 8) to hold the
    probe's other memory format too."""
    from torch import _dynamo

    need = 2 * (4 * len(cast(Any, trunk).blocks()) + 8)
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(_dynamo.config, name):
            setattr(_dynamo.config, name, max(getattr(_dynamo.config, name), need))


def _read_cache(cache: Path | None, key: dict[str, Any]) -> dict[str, Any] | None:
    if cache is None or not cache.exists():
        return None
    try:
        entries = json.loads(cache.read_text()).get("entries", [])
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("speedups: ignoring unreadable cache %s (%s); measuring again", cache, exc)
        return None
    for e in entries if isinstance(entries, list) else []:
        if (isinstance(e, dict) and e.get("key") == key and isinstance(e.get("channels_last"), bool)
                and isinstance(e.get("compile"), bool)):
            return e
    return None


def _write_cache(cache: Path | None, key: dict[str, Any], best: tuple[bool, bool],
                 timings_ms: dict[str, float]) -> None:
    if cache is None:
        return
    from bigseer.atomic import write_text_atomic

    entries: list[Any] = []
    try:
        if cache.exists():
            old = json.loads(cache.read_text()).get("entries", [])
            entries = [e for e in old if isinstance(e, dict) and e.get("key") != key] if isinstance(old, list) else []
    except (OSError, ValueError, AttributeError):
        entries = []
    entries.append({"key": key, "channels_last": best[0], "compile": best[1], "timings_ms": timings_ms,
                    "measured": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache, json.dumps({"format": CACHE_FORMAT, "entries": entries}, indent=1) + "\n")
    except OSError as exc:
        log.warning("speedups: could not write the cache %s (%s); a restart measures again", cache, exc)


__all__ = ["Speedups", "VARIANTS", "CACHE_NAME", "choose_speedups", "regnet_factory", "input_shapes",
           "device_name", "variant_name"]
