"""Training-step time of a SwAV step through bigseer.parallel: eager vs --channels_last vs --compile (and both),
same model, weights, crops and batch, interleaved repeats; medians of per-repeat ratios against eager.
The step is the engine's (``bigseer.trainer.swav_step`` with ``lars_factory``'s LARS).

    .venv/bin/python benchmarks/bench_speedups.py --model regnety_800mf --crops 2x96+4x48 --batch 8 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def _variant(name: str, model_name: str, crops: str, batch: int, channels_last: bool, compile: bool):
    from bigseer import parallel
    from bigseer.config import PretrainConfig
    from bigseer.data.multicrop import parse_crops
    from bigseer.trainer import build_swav_model, lars_factory, swav_step

    cfg = PretrainConfig(model=model_name, crops=crops, head_dims=(2048,), embed_dim=128, num_prototypes=3000, seed=0)
    model = build_swav_model(cfg)
    par = parallel.setup(model, backend="ddp", optimizer_factory=lars_factory(cfg, lr=0.1),
                         channels_last=channels_last, compile=compile)
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(grp.count, batch, 3, grp.size, grp.size, generator=g) for grp in parse_crops(crops)]

    def step() -> float:
        t0 = time.perf_counter()
        swav_step(par, data)
        return time.perf_counter() - t0

    return name, step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="regnety_800mf")
    ap.add_argument("--crops", default="2x96+4x48")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (compilation happens here)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = [("eager", False, False), ("channels_last", True, False), ("compile", False, True),
             ("compile+channels_last", True, True)]
    variants = []
    for name, cl, comp in specs:
        name, step = _variant(name, args.model, args.crops, args.batch, cl, comp)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            step()
        print(f"{name}: warm-up {time.perf_counter() - t0:.1f} s", flush=True)
        variants.append((name, step))
    times: dict[str, list[float]] = {n: [] for n, _ in variants}
    for _ in range(args.repeats):  # interleaved: A B C D A B C D ...
        for name, step in variants:
            times[name].append(step())
    load = os.getloadavg()
    print(f"\n{args.model}, crops {args.crops}, batch {args.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}")
    print("| variant | median step (s) | vs eager (median of per-repeat ratios) | range |")
    print("|---|---|---|---|")
    for name in times:
        ratios = [e / t for e, t in zip(times["eager"], times[name])]
        print(f"| {name} | {statistics.median(times[name]):.3f} | {statistics.median(ratios):.2f}x | "
              f"{min(ratios):.2f}-{max(ratios):.2f}x |")


if __name__ == "__main__":
    main()
