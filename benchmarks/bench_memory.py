"""Per-rank memory of a real SwAV step: ddp (baseline) vs fsdp (FSDP2) vs DeepSpeed ZeRO-2 / ZeRO-3, 2 gloo ranks.

Each backend runs in its own pair of spawned processes: ``build_swav_model`` (RegNetY trunk + SwAV head;
on meta for fsdp, materialised shard by shard by ``parallel.setup``) -> ``bigseer.parallel.setup`` with
the engine's LARS (``bigseer.trainer.lars_factory``: under ZeRO, DeepSpeed's flat groups with per-tensor
trust ratios; SGD + momentum if a backend refuses LARS; the table says which) -> ``--steps`` full SwAV steps
(``bigseer.trainer.swav_step``: forward, backward, optimizer step, prototype renormalisation, zero_grad) on
random crops. Measured per rank:

- model state: unique storages of every parameter, gradient and optimizer-state tensor this rank holds
  (DTensors by their local shard; for DeepSpeed also every tensor reachable from its ZeRO optimizer:
  flat parameter groups, fp32 master partitions, gradient partitions and buckets), taken after the last
  backward (before its optimizer step: parameters + gradients + the state from the previous step);
- peak RSS growth: VmHWM minus the RSS just before the model is built (imports and process group done);
- phase peaks: in the last step, the peak RSS growth of forward, backward and optimizer step apart
  (VmHWM reset between phases);
- plan: ``bigseer.plan.plan_memory(..., collectives="gloo")`` for the same run (params + grads + optimizer
  state, and the total with activations, the DeepSpeed reduce bucket and the backward temporaries).

DeepSpeed's communication buckets (``ipg_*``) are reported apart: allocated at ``reduce_bucket_size``, resident
only where touched. The ranks run with ``MALLOC_MMAP_THRESHOLD_`` (``--mmap-threshold``) so that RSS follows
the live tensors rather than glibc's retained free lists.

    .venv/bin/python benchmarks/bench_memory.py --model regnety_16gf --batch 2 --crops 2x64,2x32

``--runtime-probe``: the per-process non-tensor RSS (``bigseer.plan.RUNTIME_GLOO``) from a near-empty model.
``--fit2``: the first held-out set, now fit data (``FIT2``).

``--heldout``: the planner against configurations that were NOT used to fit its terms (``HELDOUT``: other
batch sizes, crops, heads, checkpointing, bf16 and regnety_64gf, every backend incl. ZeRO-2 and ZeRO-3), each run
the same way (its own pair of processes, ``--steps`` steps), planned vs measured peak RSS growth per rank
(max over the 2 ranks) and the error per config. ``FIT`` and ``FIT2`` list the runs the planner's terms were
measured on (see ``benchmarks/results/memory.md``).

    .venv/bin/python benchmarks/bench_memory.py --heldout
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from memstat import add_mmap_threshold_arg, apply_mmap_threshold, status_kib  # benchmarks/memstat.py
import torch  # noqa: E402

from bigseer.plan import parse_crops, plan_memory  # noqa: E402
from tests.distributed_utils import run_distributed  # noqa: E402

MIB = 2 ** 20
DS_DEFAULT_BUCKET = int(5e8)  # DeepSpeed reduce_bucket_size when the config leaves it out

# Runs the planner's terms were written against (benchmarks/results/memory.md, tests/test_plan.py):
# (preset, backends, batch per rank, crops, head dims + embedding, prototypes)
FIT = [
    ("regnety_16gf", "ddp,fsdp,zero2,zero3", 2, "2x64,2x32", "256,64", 256),
    ("regnety_8gf", "ddp,fsdp,zero2,zero3", 4, "2x96,2x48", "256,64", 256),
    ("regnety_16gf", "ddp,fsdp", 2, "2x64", "256,64", 256),
    ("regnety_3200mf", "ddp,fsdp", 2, "2x48,2x24", "16", 6),  # tests/test_plan.py
    ("regnety_400mf", "zero2", "-", "-", "-", "-"),  # ZeRO-2's whole-model gradient storage at W = 2 and 4
]
# The first held-out set (2026-12-01, morning). Its errors showed the missing per-process runtime term and
# were then used to measure the FSDP / ZeRO terms again (results/memory.md): it is fit data now.
# (name, preset, backend, batch per rank, crops, head dims + embedding, prototypes, checkpointing, precision)
FIT2 = [
    ("A-ddp", "regnety_1600mf", "ddp", 4, "2x96,4x48", "512,128", 1000, "none", "fp32"),
    ("A-fsdp", "regnety_1600mf", "fsdp", 4, "2x96,4x48", "512,128", 1000, "none", "fp32"),
    ("A-zero2", "regnety_1600mf", "zero2", 4, "2x96,4x48", "512,128", 1000, "none", "fp32"),
    ("A-zero3", "regnety_1600mf", "zero3", 4, "2x96,4x48", "512,128", 1000, "none", "fp32"),
    ("B-fsdp", "regnety_32gf", "fsdp", 1, "2x64", "256,64", 256, "all", "fp32"),
    ("B-zero2", "regnety_32gf", "zero2", 1, "2x64", "256,64", 256, "all", "fp32"),
    ("B-zero3", "regnety_32gf", "zero3", 1, "2x64", "256,64", 256, "all", "fp32"),
    ("C-ddp", "regnety_3200mf", "ddp", 4, "2x64,2x48,2x32", "256,64", 256, "all", "fp32"),
    ("D-ddp", "regnety_800mf", "ddp", 8, "2x112,2x56", "512,128", 3000, "none", "bf16"),
    ("D-fsdp", "regnety_800mf", "fsdp", 8, "2x112,2x56", "512,128", 3000, "none", "bf16"),
]
# Held out from the planner as it is now: configurations never run before its terms were set (presets
# reused with other batch / crops / head / checkpointing / precision, and regnety_64gf, never run).
HELDOUT = [
    ("E-ddp", "regnety_400mf", "ddp", 6, "2x80,4x40", "1024,128", 2000, "none", "fp32"),
    ("E-fsdp", "regnety_400mf", "fsdp", 6, "2x80,4x40", "1024,128", 2000, "none", "fp32"),
    ("E-zero2", "regnety_400mf", "zero2", 6, "2x80,4x40", "1024,128", 2000, "none", "fp32"),
    ("E-zero3", "regnety_400mf", "zero3", 6, "2x80,4x40", "1024,128", 2000, "none", "fp32"),
    ("F-fsdp", "regnety_8gf", "fsdp", 2, "2x64,4x32,2x24", "512,64", 500, "none", "fp32"),
    ("F-zero3", "regnety_8gf", "zero3", 2, "2x64,4x32,2x24", "512,64", 500, "none", "fp32"),
    ("G-ddp", "regnety_3200mf", "ddp", 4, "2x112", "256,64", 256, "all", "bf16"),
    ("G-fsdp", "regnety_3200mf", "fsdp", 4, "2x112", "256,64", 256, "all", "bf16"),
    ("H-zero2", "regnety_16gf", "zero2", 1, "2x96,2x48", "256,64", 256, "all", "fp32"),
    ("H-fsdp", "regnety_16gf", "fsdp", 1, "2x96,2x48", "256,64", 256, "all", "fp32"),
    ("I-fsdp", "regnety_64gf", "fsdp", 1, "2x64", "256,64", 256, "all", "fp32"),
    ("I-zero2", "regnety_64gf", "zero2", 1, "2x64", "256,64", 256, "all", "fp32"),
]
# The runtime probe: a near-empty model, so that RSS growth minus the plan without runtime is the process's
# non-tensor memory (bigseer.plan.RUNTIME_GLOO).
PROBE = ("regnety_200mf", 1, "2x32", "64,32", 16)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t._local_tensor if hasattr(t, "_local_tensor") else t


def _walk_tensors(obj: object, out: list[tuple[torch.Tensor, bool]], seen: set[int], depth: int = 0,
                  bucket: bool = False) -> None:
    """Every tensor reachable from ``obj`` through containers and the attributes of optimizer objects,
    as ``(tensor, is_bucket)``: DeepSpeed's communication buckets (attributes named ``*ipg*``/``*bucket*``)
    are flagged, they are allocated at the configured size but resident only where touched."""
    if id(obj) in seen or depth > 8:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        out.append((_local(obj), bucket))
        for extra in ("ds_tensor", "grad"):  # ZeRO-3 partitions hang off the (empty) module parameter
            v = getattr(obj, extra, None)
            if isinstance(v, torch.Tensor):
                _walk_tensors(v, out, seen, depth + 1, bucket)
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            _walk_tensors(k, out, seen, depth + 1, bucket)
            _walk_tensors(v, out, seen, depth + 1, bucket)
        return
    if isinstance(obj, (list, tuple, set)):
        for v in obj:
            _walk_tensors(v, out, seen, depth + 1, bucket)
        return
    mod = type(obj).__module__ or ""
    if isinstance(obj, torch.optim.Optimizer) or mod.startswith(("deepspeed.runtime", "bigseer.optim")):
        for k, v in vars(obj).items():
            _walk_tensors(v, out, seen, depth + 1, bucket or "ipg" in k or "bucket" in k)


def model_state_bytes(p: object) -> dict[str, int]:
    """Unique bytes of parameter / gradient / optimizer-state storages this rank holds (see module doc)."""
    model = p.unwrapped  # type: ignore[attr-defined]
    seen_ptr: set[int] = set()

    def count(tensors: list[torch.Tensor]) -> int:
        total = 0
        for t in tensors:
            if t is None or t.device.type == "meta":
                continue
            s = _local(t).untyped_storage()
            if s.nbytes() and s.data_ptr() not in seen_ptr:
                seen_ptr.add(s.data_ptr())
                total += s.nbytes()
        return total

    params = count([_local(q) for q in model.parameters()] + [q.ds_tensor for q in model.parameters()
                                                             if hasattr(q, "ds_tensor")])
    grads = count([_local(q.grad) for q in model.parameters() if q.grad is not None])
    found: list[tuple[torch.Tensor, bool]] = []
    _walk_tensors(p.optimizer, found, set())  # type: ignore[attr-defined]
    engine = getattr(p, "engine", None)
    if engine is not None:
        _walk_tensors(engine.optimizer, found, set())
    # optimizer state, plus DeepSpeed's flat groups / fp32 master partitions / gradient partitions
    other = count([t for t, b in found if not b])
    buckets = count([t for t, b in found if b])
    return {"params": params, "grads": grads, "optimizer+zero": other, "total": params + grads + other,
            "buckets": buckets}


def _rank(rank: int, world: int, backend: str, cfg_kw: dict, crops: list[tuple[int, int]], batch: int,
          steps: int, setup_kw: dict | None = None) -> dict:
    import deepspeed  # noqa: F401  (imported before the baseline by every backend: code pages not counted)
    import torch.distributed.checkpoint  # noqa: F401
    import torch.distributed.fsdp  # noqa: F401
    from phases import probed_step  # benchmarks/phases.py: swav_step with its phase boundaries

    from bigseer import parallel
    from bigseer.config import PretrainConfig
    from bigseer.errors import ConfigError
    from bigseer.trainer import build_swav_model, lars_factory

    cfg = PretrainConfig(**cfg_kw)
    setup_kw = dict(setup_kw or {})
    if setup_kw.pop("ds_clone_master", False):  # DeepSpeed's own behaviour: a second fp32 copy under ZeRO-3
        import bigseer.parallel.deepspeed as bds

        bds._share_fp32_master = lambda _opt: None
    torch.manual_seed(0)
    base = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    meta = backend == "fsdp"
    if meta:
        with torch.device("meta"):
            model = build_swav_model(cfg, device="meta")
    else:
        model = build_swav_model(cfg)
    kw: dict = dict(backend=backend.replace("_eager", ""), **setup_kw)
    if backend.startswith("zero"):
        kw = dict(backend="deepspeed", ds_config=f"ds_configs/{backend}_fp32.json", **setup_kw)
    optimizer = "LARS"
    try:
        p = parallel.setup(model, optimizer_factory=lars_factory(cfg, lr=0.1), **kw)
    except ConfigError as e:
        if "LARS" not in str(e) and "optimizer" not in str(e):
            raise
        optimizer = f"SGD (LARS refused: {e})"
        p = parallel.setup(model, optimizer_factory=lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9), **kw)
    g = torch.Generator().manual_seed(rank)
    held = {}
    times = []
    phases: dict[str, int] = {}
    peak = [0]  # VmHWM is reset per phase in the last step: keep the run's maximum here

    def phase(name: str | None) -> None:
        """Peak RSS growth of the phase that just ended (last step only), then reset VmHWM for the next."""
        if step != steps - 1:
            return
        peak[0] = max(peak[0], status_kib("VmHWM"))
        if phase.current:  # type: ignore[attr-defined]
            phases[phase.current] = (status_kib("VmHWM") - base) * 1024  # type: ignore[attr-defined]
        phases["start_" + (name or "end")] = (status_kib("VmRSS") - base) * 1024
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        phase.current = name  # type: ignore[attr-defined]

    phase.current = None  # type: ignore[attr-defined]

    def on(call: str | None) -> None:  # swav_step's boundaries: forward | backward | step (+ renorm, zero_grad)
        if call in ("forward", "backward"):
            phase(call)
        elif call == "step":
            phase(None)
            if step == steps - 1:
                held.update(model_state_bytes(p))  # after the backward, before its optimizer step
            phase("step")
        elif call is None:
            phase(None)

    for step in range(steps):  # noqa: B007  (read by phase() and on())
        x = [torch.randn(n, batch, 3, s, s, generator=g) for n, s in crops]
        t0 = time.perf_counter()
        loss, _ = probed_step(p, x, on)
        times.append(time.perf_counter() - t0)
        assert torch.isfinite(loss.detach()), f"{backend}: loss {float(loss)}"
    peak[0] = max(peak[0], status_kib("VmHWM"))
    return {"peak_rss": (peak[0] - base) * 1024, "phases": phases, "held": held, "optimizer": optimizer,
            "step_s": statistics.median(times[1:] or times), "meta": meta, "loss": float(loss.detach())}


def measure(backend: str, model: str, batch: int, crops: list[tuple[int, int]], dims: list[int], prototypes: int,
            steps: int, checkpointing: str = "none", precision: str = "fp32", ds_clone_master: bool = False) -> dict:
    """One backend on 2 fresh ranks, plus the plan for the same run."""
    cfg_kw = dict(model=model, head_dims=tuple(dims[:-1]), embed_dim=dims[-1], num_prototypes=prototypes,
                  crops="+".join(f"{n}x{s}" for n, s in crops), batch_size=batch)
    setup_kw = dict(checkpointing=checkpointing, precision=precision, ds_clone_master=ds_clone_master)
    t0 = time.perf_counter()
    res = run_distributed(_rank, 2, (backend, cfg_kw, crops, batch, steps, setup_kw))
    ds = backend.startswith("zero")
    bucket = 0
    if ds:
        with open(f"ds_configs/{backend}_fp32.json") as f:
            zcfg = json.load(f)["zero_optimization"]
        bucket = int(zcfg.get("reduce_bucket_size", DS_DEFAULT_BUCKET))
    kw = dict(world_size=2, backend="deepspeed" if ds else backend.replace("_eager", ""),
              zero_stage=int(backend[-1]) if ds else 2, batch_per_gpu=batch, crops=crops, head_dims=dims,
              prototypes=prototypes, checkpointing=checkpointing, precision=precision)
    plan = plan_memory(model, ds_bucket=bucket, collectives="gloo", **kw)
    row = dict(backend=backend, held=max(r["held"]["total"] for r in res),
               parts=res[0]["held"], rss=max(r["peak_rss"] for r in res), step_s=res[0]["step_s"],
               plan_state=plan.params + plan.grads + plan.optimizer, plan=plan, res=res,
               buckets=max(r["held"]["buckets"] for r in res), plan_total=plan.total,
               optimizer=res[0]["optimizer"], meta=res[0]["meta"], wall=time.perf_counter() - t0,
               n=plan.trunk_params + plan.head_params)
    print(f"{model} {backend}: done in {row['wall']:.0f} s, rank-0 parts (MiB) "
          f"{ {k: round(v / MIB) for k, v in res[0]['held'].items()} }, optimizer {res[0]['optimizer']}; "
          f"last step, per rank, RSS growth at phase start / phase peak (MiB): "
          f"{[{k: round(v / MIB) for k, v in r['phases'].items()} for r in res]}", flush=True)
    return row


def runtime_probe(steps: int) -> None:
    """Per-process non-tensor RSS by backend: peak RSS growth of the PROBE run minus its plan without runtime."""
    model, batch, crops, head, prototypes = PROBE
    dims = [int(d) for d in head.split(",")]
    print(f"runtime probe: {model}, batch {batch}, crops {crops}, head {head}, K {prototypes}, 2 gloo ranks, "
          f"{steps} steps")
    print("| backend | peak RSS growth (MiB) | plan without runtime (MiB) | runtime = difference (MiB) | "
          "plan's RUNTIME_GLOO (MiB) |")
    print("|---|---|---|---|---|")
    for backend in ("ddp", "fsdp", "zero2", "zero3"):
        r = measure(backend, model, batch, parse_crops(crops), dims, prototypes, steps)
        plan = r["plan"]
        rest = plan.total - plan.runtime
        print(f"| {backend} | {r['rss'] / MIB:.0f} | {rest / MIB:.0f} | {(r['rss'] - rest) / MIB:.0f} | "
              f"{plan.runtime / MIB:.0f} |", flush=True)


def heldout(steps: int, configs: list | None = None) -> None:
    """Planned vs measured peak RSS growth per rank on the HELDOUT configurations (or ``configs``)."""
    print("used to fit the planner (not re-run here): " + "; ".join(
        f"{m} {b} batch {n} crops {c} head {h} K {k}" for m, b, n, c, h, k in FIT) + "; "
        + ", ".join(c[0] for c in FIT2) + " (FIT2)", flush=True)
    rows = []
    for name, model, backend, batch, crops, head, prototypes, ckpt, precision in (configs or HELDOUT):
        dims = [int(d) for d in head.split(",")]
        r = measure(backend, model, batch, parse_crops(crops), dims, prototypes, steps, ckpt, precision)
        rows.append((name, model, backend, batch, crops, head, prototypes, ckpt, precision, r))
    label = "held-out configurations" if configs is None else "the FIT2 configurations (fit data)"
    print(f"\nPlanner on {label}, 2 gloo ranks, {steps} steps each, LARS, peak RSS growth per rank "
          "(max over ranks) vs plan_memory(..., collectives='gloo'); error = plan / measured - 1")
    print("| config | preset (params) | backend | batch/rank | crops | head, K | checkpointing | precision | "
          "measured model state (MiB) | plan state (MiB) | err | measured peak RSS growth (MiB) | plan total (MiB) "
          "| err |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    errs = []
    for name, model, backend, batch, crops, head, prototypes, ckpt, precision, r in rows:
        err = r["plan_total"] / r["rss"] - 1
        errs.append(err)
        print(f"| {name} | {model} ({r['n'] / 1e6:.1f}M) | {backend} | {batch} | {crops} | {head}, {prototypes} | {ckpt} "
              f"| {precision} | {r['held'] / MIB:.0f} | {r['plan_state'] / MIB:.0f} | "
              f"{r['plan_state'] / r['held'] - 1:+.0%} | {r['rss'] / MIB:.0f} | {r['plan_total'] / MIB:.0f} | "
              f"{err:+.0%} |")
    print(f"\nabs error: median {statistics.median(abs(e) for e in errs):.0%}, max {max(abs(e) for e in errs):.0%}; "
          f"{sum(abs(e) > 0.2 for e in errs)} of {len(errs)} configs miss 20%")
    print("\nLast step, peak RSS growth per phase (max over ranks) and the plan's parts (MiB):")
    print("| config | forward | backward | step | plan params | plan grads | plan optimizer | plan activations | "
          "plan comm buckets | plan gathered/temps |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, *_, r in rows:
        ph = {k: max(x["phases"].get(k, 0) for x in r["res"]) / MIB for k in ("forward", "backward", "step")}
        pl = r["plan"]
        print(f"| {name} | {ph['forward']:.0f} | {ph['backward']:.0f} | {ph['step']:.0f} | {pl.params / MIB:.0f} | "
              f"{pl.grads / MIB:.0f} | {pl.optimizer / MIB:.0f} | {pl.activations / MIB:.0f} | {pl.comm / MIB:.0f} | "
              f"{pl.transient / MIB:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="regnety_16gf")
    ap.add_argument("--batch", type=int, default=2, help="per rank")
    ap.add_argument("--crops", default="2x64,2x32")
    ap.add_argument("--head", default="256,64", help="hidden dims then embedding dim")
    ap.add_argument("--prototypes", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--backends", default="ddp,fsdp,zero2,zero3")
    ap.add_argument("--heldout", action="store_true", help="run the HELDOUT configurations instead")
    ap.add_argument("--fit2", action="store_true", help="run the FIT2 configurations (the first held-out set)")
    ap.add_argument("--runtime-probe", action="store_true",
                    help="measure the per-process non-tensor RSS that bigseer.plan.RUNTIME_GLOO holds")
    ap.add_argument("--ds-clone-master", action="store_true",
                    help="ZeRO-3 as DeepSpeed 0.19.8 leaves it (a separate fp32 master copy), without "
                         "bigseer.parallel.deepspeed's alias: the before of that fix")
    add_mmap_threshold_arg(ap)
    args = ap.parse_args()
    apply_mmap_threshold(args.mmap_threshold)
    if args.runtime_probe:
        runtime_probe(args.steps)
        return
    if args.heldout or args.fit2:
        heldout(args.steps, FIT2 if args.fit2 else None)
        return
    crops = parse_crops(args.crops)
    dims = [int(d) for d in args.head.split(",")]
    rows = [measure(b, args.model, args.batch, crops, dims, args.prototypes, args.steps,
                    ds_clone_master=args.ds_clone_master) for b in args.backends.split(",")]
    base = rows[0]
    print(f"\n{args.model} SwAV (head {args.head}, {args.prototypes} prototypes, {rows[0]['n']:,} params), "
          f"2 gloo ranks, batch {args.batch}/rank, crops {args.crops}, fp32, {args.steps} steps; "
          f"ratios vs {base['backend']}")
    print("| backend | init | optimizer | model state / rank (MiB) | vs ddp | plan state (MiB) | plan err |"
          " DS buckets allocated (MiB) | peak RSS growth / rank (MiB) | vs ddp | plan total (MiB) | plan err vs RSS |"
          " step (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        init = "meta" if r["meta"] else "eager"
        print(f"| {r['backend']} | {init} | {r['optimizer'][:40]} | {r['held'] / MIB:.0f} | "
              f"{r['held'] / base['held']:.2f} | {r['plan_state'] / MIB:.0f} | "
              f"{r['plan_state'] / r['held'] - 1:+.0%} | "
              f"{r['buckets'] / MIB:.0f} | "
              f"{r['rss'] / MIB:.0f} | {r['rss'] / base['rss']:.2f} | {r['plan_total'] / MIB:.0f} | "
              f"{r['plan_total'] / r['rss'] - 1:+.0%} | {r['step_s']:.2f} |")
    print("\nLast step, peak RSS growth per phase (max over ranks) and the plan's parts (MiB):")
    print("| backend | forward | backward | step | plan activations | plan comm buckets | plan gathered/temps |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ph = {k: max(x["phases"].get(k, 0) for x in r["res"]) / MIB for k in ("forward", "backward", "step")}
        pl = r["plan"]
        print(f"| {r['backend']} | {ph['forward']:.0f} | {ph['backward']:.0f} | {ph['step']:.0f} | "
              f"{pl.activations / MIB:.0f} | {pl.comm / MIB:.0f} | {pl.transient / MIB:.0f} |")


if __name__ == "__main__":
    main()
