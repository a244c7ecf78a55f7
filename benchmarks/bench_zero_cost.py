"""Cost of LARS's one-param-group-per-tensor under DeepSpeed ZeRO-2 / ZeRO-3 vs DeepSpeed's flat groups.

``bigseer.parallel.setup`` hands a plain ``LARS`` one tensor per param group under ZeRO >= 1
(``bigseer.parallel.zero_param_groups``), so DeepSpeed builds one flat partition per tensor and steps
them one at a time (exact per-tensor trust ratios, see ``bigseer.optim.lars``). This measures what that
costs against the same step with DeepSpeed's usual flat groups (all tensors in one group):

- ``lars-per-tensor``: ``LARS`` (``zero_flat=False``, ``bigseer.optim.build_lars``) through ``bigseer.parallel.setup``;
- ``lars-zero-flat``: the engine's LARS (``bigseer.trainer.lars_factory``: ``LARS(zero_flat=True)``):
  DeepSpeed's flat groups, the same exact per-tensor trust ratios from the partition boundaries
  (``bigseer.parallel.zero_pieces.flat_segments``, one all-reduce per flat group);
- ``lars-flat``: the same LARS maths (``LARS.step``) in an optimizer class that is not ``LARS``, so setup
  passes the ordinary single group and DeepSpeed flattens it into one partition per rank. Its trust ratio
  is then that of the whole partition, i.e. WRONG: this is a cost baseline only;
- ``sgd-flat``: ``torch.optim.SGD(momentum=0.9)`` on the flat group (DeepSpeed's common case).

All three engines live in the same 2 gloo ranks (one process pair per ZeRO stage, 1 thread per rank),
each on its own copy of the same SwAV model (``build_swav_model``, eager init, fp32, the repo's
``ds_configs/zero{2,3}_fp32.json``); steps are interleaved (A B C, then C B A, ...) on the same random
crops, after ``--warmup`` untimed steps each. Each step is the engine's (``bigseer.trainer.swav_step``), timed
per call between barriers (``benchmarks/phases.py``; so a phase's time is the slowest rank's): forward, backward,
``engine.step()`` (DeepSpeed's whole optimizer step: gradient
partitions, norms, the per-group optimizer calls, parameter all-gather / re-partition), and inside it
the time spent in the wrapped optimizer's own ``step`` calls (the LARS / SGD maths, incl. LARS's
all-reduce of the sums of squares). Ratios are medians of per-step ratios against ``lars-flat`` measured
in the same round.

    DS_ACCELERATOR=cpu .venv/bin/python benchmarks/bench_zero_cost.py --model regnety_8gf --batch 2 \\
        --crops 2x64,2x32 --steps 6
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402

from bigseer.plan import parse_crops  # noqa: E402
from bigseer.optim.lars import LARS  # noqa: E402
from tests.distributed_utils import run_distributed  # noqa: E402

VARIANTS = ("lars-per-tensor", "lars-zero-flat", "lars-flat", "sgd-flat")
BASELINE = "lars-flat"
PHASES = ("forward", "backward", "engine_step", "optimizer_calls", "total")


class FlatLARS(torch.optim.Optimizer):
    """LARS's step on whatever groups it is given, but not a ``LARS`` instance: bigseer then does not split
    the groups, so under ZeRO each flat partition gets ONE trust ratio (wrong maths; cost baseline)."""

    _norms = LARS._norms
    _flat_ratios = LARS._flat_ratios
    _ratios = LARS.__dict__["_ratios"]  # a staticmethod
    _foreach_update = LARS._foreach_update
    step = LARS.step

    def __init__(self, params: object, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 1e-5,
                 trust_coefficient: float = 0.001, eps: float = 1e-8) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, eps=eps, clip=False,
                                      lars_exclude=False))
        self._zero_segments: dict = {}  # none: LARS.step then takes each flat partition as one tensor
        self.foreach = None  # LARS.step's default: multi-tensor ops on accelerators, the per-tensor loop on CPU


def _factory(variant: str, cfg: object):  # type: ignore[no-untyped-def]
    from bigseer.optim import build_lars
    from bigseer.trainer import lars_factory

    if variant == "lars-per-tensor":
        return lambda g: build_lars(g, lr=0.1, momentum=0.9, weight_decay=1e-5)
    if variant == "lars-zero-flat":
        return lars_factory(cfg, lr=0.1)  # type: ignore[arg-type]
    if variant == "lars-flat":
        return lambda g: FlatLARS(g, lr=0.1, momentum=0.9, weight_decay=1e-5)
    return lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, weight_decay=1e-5)


def _rank(rank: int, world: int, stage: int, cfg_kw: dict, crops: list[tuple[int, int]], batch: int,
          steps: int, warmup: int) -> dict:
    import torch.distributed as dist
    from phases import timed_step  # benchmarks/phases.py: swav_step, timed per Parallel call

    from bigseer import parallel
    from bigseer.config import PretrainConfig
    from bigseer.trainer import build_swav_model

    cfg = PretrainConfig(**cfg_kw)
    runs = {}
    for v in VARIANTS:
        torch.manual_seed(0)
        p = parallel.setup(build_swav_model(cfg), backend="deepspeed", ds_config=f"ds_configs/zero{stage}_fp32.json",
                           optimizer_factory=_factory(v, cfg))
        inner = p.engine.optimizer.optimizer  # the torch optimizer DeepSpeed calls once per group / sub-group
        spent = [0.0, 0]
        orig = inner.step

        def timed(*a, _orig=orig, _spent=spent, **k):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            out = _orig(*a, **k)
            _spent[0] += time.perf_counter() - t0
            _spent[1] += 1
            return out

        inner.step = timed
        runs[v] = dict(p=p, spent=spent, groups=len(inner.param_groups),
                       ds_groups=len(getattr(p.engine.optimizer, "fp16_groups",
                                             getattr(p.engine.optimizer, "bit16_groups", []))))
    ref = list(build_swav_model(cfg).parameters())
    n_tensors, n_params = sum(1 for q in ref if q.requires_grad), sum(q.numel() for q in ref)
    del ref
    times: dict[str, dict[str, list[float]]] = {v: {ph: [] for ph in PHASES} for v in VARIANTS}
    calls: dict[str, int] = {}
    losses: dict[str, list[float]] = {v: [] for v in VARIANTS}

    g = torch.Generator().manual_seed(1000 + rank)
    for it in range(warmup + steps):
        x = [torch.randn(n, batch, 3, s, s, generator=g) for n, s in crops]
        for v in (VARIANTS if it % 2 == 0 else VARIANTS[::-1]):
            r = runs[v]
            p = r["p"]
            r["spent"][0], r["spent"][1] = 0.0, 0
            loss, _, spans = timed_step(p, x, sync=dist.barrier)
            t_f, t_b, t_s = spans["forward"], spans["backward"], spans["step"]
            losses[v].append(float(loss.detach()))
            calls[v] = r["spent"][1]
            if it >= warmup:
                for ph, t in zip(PHASES, (t_f, t_b, t_s, r["spent"][0], t_f + t_b + t_s)):
                    times[v][ph].append(t)
    return {"times": times, "calls": calls, "losses": losses, "n_tensors": n_tensors,
            "groups": {v: runs[v]["groups"] for v in VARIANTS}, "ds_groups": {v: runs[v]["ds_groups"] for v in VARIANTS},
            "n_params": n_params}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="regnety_8gf")
    ap.add_argument("--batch", type=int, default=2, help="per rank")
    ap.add_argument("--crops", default="2x64,2x32")
    ap.add_argument("--head", default="256,64", help="hidden dims then embedding dim")
    ap.add_argument("--prototypes", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--stages", default="2,3")
    args = ap.parse_args()
    crops = parse_crops(args.crops)
    dims = [int(d) for d in args.head.split(",")]
    cfg_kw = dict(model=args.model, head_dims=tuple(dims[:-1]), embed_dim=dims[-1], num_prototypes=args.prototypes,
                  crops="+".join(f"{n}x{s}" for n, s in crops), batch_size=args.batch)
    for stage in (int(s) for s in args.stages.split(",")):
        t0 = time.perf_counter()
        res = run_distributed(_rank, 2, (stage, cfg_kw, crops, args.batch, args.steps, args.warmup))
        r = res[0]  # phases are timed between barriers: every rank sees the same span (slowest rank)
        t = r["times"]
        print(f"\nZeRO-{stage}: {args.model} SwAV (head {args.head}, {args.prototypes} prototypes, {r['n_params']:,} "
              f"params in {r['n_tensors']} tensors), 2 gloo ranks x 1 thread, batch {args.batch}/rank, crops "
              f"{args.crops}, fp32, ds_configs/zero{stage}_fp32.json; {args.steps} timed steps per variant after "
              f"{args.warmup} warm-up, interleaved; wall {time.perf_counter() - t0:.0f} s; losses finite: "
              f"{all(torch.isfinite(torch.tensor(x)).all() for x in r['losses'].values())}")
        print("| variant | optimizer param groups | DeepSpeed groups | optimizer calls / step | forward (s) | "
              "backward (s) | engine.step (s) | of which optimizer calls (s) | whole step (s) | engine.step share of "
              "step | engine.step vs lars-flat | whole step vs lars-flat | per-step engine.step (s) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for v in VARIANTS:
            med = {ph: statistics.median(t[v][ph]) for ph in PHASES}
            share = statistics.median(s / w for s, w in zip(t[v]["engine_step"], t[v]["total"]))
            r_step = statistics.median(a / b for a, b in zip(t[v]["engine_step"], t[BASELINE]["engine_step"]))
            r_tot = statistics.median(a / b for a, b in zip(t[v]["total"], t[BASELINE]["total"]))
            print(f"| {v} | {r['groups'][v]} | {r['ds_groups'][v]} | {r['calls'][v]} | {med['forward']:.2f} | "
                  f"{med['backward']:.2f} | {med['engine_step']:.3f} | {med['optimizer_calls']:.3f} | "
                  f"{med['total']:.2f} | {share:.1%} | {r_step:.2f}x | {r_tot:.2f}x | "
                  f"{', '.join(f'{x:.2f}' for x in t[v]['engine_step'])} |")
        for v in ("lars-per-tensor", "lars-zero-flat"):
            extra = [a - b for a, b in zip(t[v]["engine_step"], t[BASELINE]["engine_step"])]
            extra_tot = [(a - b) / w for a, b, w in zip(t[v]["engine_step"], t[BASELINE]["engine_step"], t[v]["total"])]
            per_group = (f" ({statistics.median(extra) * 1e3 / (r['groups'][v] - 1):.2f} ms per extra param group)"
                         if r["groups"][v] > 1 else "")
            print(f"{v}: extra engine.step time vs {BASELINE} = median {statistics.median(extra) * 1e3:.0f} ms"
                  f"{per_group} = "
                  f"{statistics.median(extra_tot):.1%} of its whole step (per-step values: "
                  f"{', '.join(f'{x:.1%}' for x in extra_tot)}); whole step vs {BASELINE}: median of per-step "
                  f"ratios {statistics.median(a / b for a, b in zip(t[v]['total'], t[BASELINE]['total'])):.2f}x")


if __name__ == "__main__":
    main()
