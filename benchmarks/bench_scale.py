"""Scale: (3) one full SwAV step of RegNetY-256GF + SEER head on 2 CPU ranks (FSDP2, meta init), and
(4) SEER-10B built on meta with the planner's per-GPU table for 512 GPUs.

``--part step``: 2 gloo ranks; each builds ``build_swav_model`` on meta (trunk ``--model``, head
``--head`` hidden dims + embedding, ``--prototypes``), ``bigseer.parallel.setup(backend="fsdp",
checkpointing="all")`` with the engine's LARS (``bigseer.trainer.lars_factory``; each rank allocates and
initialises only its shards), then one full step (``bigseer.trainer.swav_step``): forward, backward, LARS step,
prototype renormalisation, zero_grad. Measured per rank: RSS after setup, peak RSS
(VmHWM) and its growth over the pre-build RSS, model-state bytes held (local param + grad + optimizer
storages), time per phase. The baseline is the planner's prediction for the same run
(``bigseer.plan.plan_memory``), printed side by side with the ratio.

``--part plan``: ``seer_10b`` SwAV model built on meta (``build_swav_model(cfg, device="meta")``), then
``plan_memory`` for ``--gpus`` ranks; prints the table and the time each took; then today's plan for the
``--part step`` run (``--model`` etc.), to set beside that run's measured peak.

    .venv/bin/python benchmarks/bench_scale.py --part plan
    .venv/bin/python benchmarks/bench_scale.py --part step --model regnety_256gf --batch 1 --crops 2x64,2x32
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from memstat import add_mmap_threshold_arg, apply_mmap_threshold, status_kib  # benchmarks/memstat.py
import torch  # noqa: E402

from bigseer.plan import parse_crops, plan_memory  # noqa: E402

GIB = 2 ** 30
SEER_HEAD = "8192,8192,256"


def _cfg(model: str, head: list[int], prototypes: int, crops: list[tuple[int, int]], batch: int) -> object:
    from bigseer.config import PretrainConfig

    return PretrainConfig(model=model, head_dims=tuple(head[:-1]), embed_dim=head[-1], num_prototypes=prototypes,
                          crops="+".join(f"{n}x{s}" for n, s in crops), batch_size=batch)


def _local_bytes(tensors: object) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:  # type: ignore[attr-defined]
        if not isinstance(t, torch.Tensor):
            continue
        t = t._local_tensor if hasattr(t, "_local_tensor") else t
        s = t.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
    return total


def _step_rank(rank: int, world: int, model_name: str, head: list[int], prototypes: int,
               crops: list[tuple[int, int]], batch: int, precision: str) -> dict:
    import torch.distributed.fsdp  # noqa: F401  (code pages loaded before the baseline RSS)
    from phases import timed_step  # benchmarks/phases.py: swav_step, timed per Parallel call

    from bigseer import parallel
    from bigseer.trainer import build_swav_model, lars_factory

    cfg = _cfg(model_name, head, prototypes, crops, batch)
    torch.manual_seed(0)
    base = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    out: dict = {"base_gib": base / 2 ** 20}
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = build_swav_model(cfg, device="meta")
    out["params"] = sum(p.numel() for p in model.parameters()) * (world if cfg.shard_prototypes else 1)
    p = parallel.setup(model, backend="fsdp", precision=precision, checkpointing="all",
                       optimizer_factory=lars_factory(cfg, lr=0.1))
    out["setup_s"] = time.perf_counter() - t0
    out["after_setup_gib"] = (status_kib("VmRSS") - base) / 2 ** 20
    g = torch.Generator().manual_seed(rank)
    x = [torch.randn(n, batch, 3, s, s, generator=g) for n, s in crops]
    grads: list[int] = []  # gradient bytes held after the backward (read untimed, before the optimizer step)

    def on(call: str | None) -> None:
        if call == "step":
            grads.append(_local_bytes(q.grad for q in model.parameters() if q.grad is not None))

    loss, _, t = timed_step(p, x, on=on)
    out["forward_s"], out["backward_s"] = t["forward"], t["backward"]
    out["grads_gib"] = grads[0] / GIB
    out["optim_s"] = t["step"] + t["run_on_full_params"]
    out["params_gib"] = _local_bytes(model.parameters()) / GIB
    out["optimizer_gib"] = _local_bytes(v for st in p.optimizer.state.values() for v in st.values()) / GIB
    out["step_s"] = out["forward_s"] + out["backward_s"] + out["optim_s"]
    out["loss"] = float(loss.detach())
    out["finite"] = bool(torch.isfinite(loss.detach()))
    out["peak_gib"] = status_kib("VmHWM") / 2 ** 20
    out["peak_growth_gib"] = (status_kib("VmHWM") - base) / 2 ** 20
    return out


def _step_plan(args: argparse.Namespace) -> object:
    """The planner's prediction for ``--part step`` (2 gloo ranks: ``collectives="gloo"``)."""
    return plan_memory(args.model, world_size=2, backend="fsdp", precision=args.precision, batch_per_gpu=args.batch,
                       crops=parse_crops(args.crops), checkpointing="all", head_dims=[int(d) for d in args.head.split(",")],
                       prototypes=args.prototypes, collectives="gloo")


def part_step(args: argparse.Namespace) -> None:
    from tests.distributed_utils import run_distributed

    crops = parse_crops(args.crops)
    head = [int(d) for d in args.head.split(",")]
    t0 = time.perf_counter()
    res = run_distributed(_step_rank, 2, (args.model, head, args.prototypes, crops, args.batch, args.precision))
    wall = time.perf_counter() - t0
    plan = _step_plan(args)
    print(f"{args.model} + SwAV head {args.head}, {args.prototypes} prototypes ({res[0]['params']:,} params), "
          f"2 gloo ranks (1 thread each), fsdp {args.precision}, meta init, checkpointing all, "
          f"batch {args.batch}/rank, "
          f"crops {args.crops}, LARS; wall {wall:.0f} s incl. spawn; loss {res[0]['loss']:.4f} / {res[1]['loss']:.4f}")
    print("| per rank | rank 0 | rank 1 | plan | rank 0 / plan |")
    print("|---|---|---|---|---|")
    rows = [("parameters held (GiB)", "params_gib", plan.params / GIB),
            ("gradients held (GiB)", "grads_gib", plan.grads / GIB),
            ("optimizer state (GiB)", "optimizer_gib", plan.optimizer / GIB),
            ("RSS after setup, over base (GiB)", "after_setup_gib", None),
            ("peak RSS growth (GiB)", "peak_growth_gib", plan.total / GIB),
            ("peak RSS (GiB)", "peak_gib", None),
            ("setup incl. meta build + shard init (s)", "setup_s", None),
            ("forward (s)", "forward_s", None), ("backward (s)", "backward_s", None),
            ("LARS step + renorm (s)", "optim_s", None), ("full step (s)", "step_s", None)]
    for name, key, pl in rows:
        a, b = res[0][key], res[1][key]
        ratio = f"{a / pl:.2f}" if pl else ""
        print(f"| {name} | {a:.2f} | {b:.2f} | {f'{pl:.2f}' if pl is not None else ''} | {ratio} |")
    print(f"| total peak RSS, both ranks (GiB) | {res[0]['peak_gib'] + res[1]['peak_gib']:.2f} | | "
          f"{2 * plan.total / GIB:.2f} (2 x plan total) | |")
    print(f"all finite: {all(r['finite'] for r in res)}")


def part_plan(args: argparse.Namespace) -> None:
    from bigseer.trainer import build_swav_model

    crops = parse_crops(args.plan_crops)
    head = [int(d) for d in args.head.split(",")]
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = build_swav_model(_cfg("seer_10b", head, args.prototypes, crops, args.plan_batch), device="meta")
    build_s = time.perf_counter() - t0
    n = sum(p.numel() for p in model.parameters())
    assert all(p.is_meta for p in model.parameters())
    print(f"seer_10b SwAV model on meta: {n:,} parameters, built in {build_s:.2f} s (nothing allocated)")
    for precision in args.plan_precisions.split(","):
        plan = plan_memory("seer_10b", world_size=args.gpus, backend="fsdp", precision=precision,
                           batch_per_gpu=args.plan_batch, crops=crops, checkpointing="all", head_dims=head,
                           prototypes=args.prototypes)
        print(f"\n[plan_memory took {plan.seconds:.2f} s]")
        print(plan.table())
    step_plan = _step_plan(args)
    print(f"\nToday's plan for the --part step run ({args.model}, fsdp {args.precision}, 2 gloo ranks, batch {args.batch}, "
          f"crops {args.crops}, checkpointing all) [plan_memory took {step_plan.seconds:.2f} s]:")
    print(step_plan.table())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("step", "plan"), required=True)
    ap.add_argument("--model", default="regnety_256gf")
    ap.add_argument("--head", default=SEER_HEAD, help="hidden dims then embedding dim")
    ap.add_argument("--prototypes", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--crops", default="2x64,2x32")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--gpus", type=int, default=512)
    ap.add_argument("--plan-batch", type=int, default=16)
    ap.add_argument("--plan-crops", default="2x160,4x96")
    ap.add_argument("--plan-precisions", default="fp16,bf16")
    add_mmap_threshold_arg(ap)
    args = ap.parse_args()
    apply_mmap_threshold(args.mmap_threshold)
    (part_step if args.part == "step" else part_plan)(args)


if __name__ == "__main__":
    main()
