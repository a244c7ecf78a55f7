"""Cost of one LARS optimizer step: bigseer's multi-tensor (``torch._foreach_*``) update against its own
per-tensor loop and against lightly's LARS, on the tensors of a real SwAV model.

Variants, each on its own copy of the same parameters (``build_swav_model``: the RegNetY trunk + a SwAV head,
fp32) with the same random gradients (set once; every step reads them):

- ``foreach``: ``bigseer.optim.LARS(foreach=True)``: multi-tensor ops (the default on accelerators);
- ``loop``: ``foreach=False``, each tensor's norms next to its update (the default on CPU);
- ``before`` (with ``--before REV``): ``bigseer/optim/lars.py`` as it was at git revision REV, loaded from
  ``git show`` (the code a change replaced);
- ``lightly``: ``lightly.utils.lars.LARS`` (what a user of lightly's SwAV example steps), same lr, momentum,
  weight decay and trust coefficient.

Steps are interleaved (order rotated every round) after ``--warmup`` rounds; quoted: the median step time per
variant and the median of per-round ratios against ``loop`` (the CPU default) and against ``lightly``. One process, ``--threads`` intra-op threads.

    .venv/bin/python benchmarks/bench_lars.py --model regnety_800mf --rounds 30 --before 03cea4e
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import types
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402


def build_params(model: str, hidden: int, embed: int, prototypes: int) -> list[torch.nn.Parameter]:
    from bigseer.config import PretrainConfig
    from bigseer.trainer import build_swav_model

    torch.manual_seed(0)
    cfg = PretrainConfig(model=model, head_dims=(hidden,), embed_dim=embed, num_prototypes=prototypes)
    net = build_swav_model(cfg)
    params = [p for p in net.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(1)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-2
    return params


def clone(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    out = []
    for p in params:
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = p.grad.clone()
        out.append(q)
    return out


def lars_at(rev: str) -> type:
    """The ``LARS`` class of ``bigseer/optim/lars.py`` at git revision ``rev``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = subprocess.run(["git", "show", f"{rev}:bigseer/optim/lars.py"], cwd=root, capture_output=True,
                         text=True, check=True).stdout
    mod = types.ModuleType("bigseer.optim._lars_before")
    exec(compile(src, f"{rev}:bigseer/optim/lars.py", "exec"), mod.__dict__)
    return mod.LARS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="regnety_800mf")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--embed", type=int, default=128)
    ap.add_argument("--prototypes", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--before", default=None, metavar="REV", help="add LARS as it was at this git revision")
    ap.add_argument("--out", default=None, help="append the markdown table here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from bigseer.optim import LARS

    kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-5, trust_coefficient=0.001)
    base = build_params(args.model, args.hidden, args.embed, args.prototypes)
    opts = {"foreach": LARS(clone(base), **kw), "loop": LARS(clone(base), foreach=False, **kw)}
    if args.before:
        opts["before"] = lars_at(args.before)(clone(base), **kw)
    try:
        from lightly.utils.lars import LARS as LightlyLARS

        opts["lightly"] = LightlyLARS(clone(base), **kw)
    except ImportError:
        print("lightly is not installed: its variant is left out (pip install lightly)")
    names = list(opts)
    times: dict[str, list[float]] = {n: [] for n in names}
    load0 = os.getloadavg()
    for r in range(args.warmup + args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t = time.perf_counter()
            opts[n].step()
            dt = time.perf_counter() - t
            if r >= args.warmup:
                times[n].append(dt)
    load1 = os.getloadavg()
    n_t = len(base)
    n_el = sum(p.numel() for p in base)
    rev = f"; before = {args.before}" if args.before else ""
    lines = [f"LARS step, {args.model} + SwAV head {args.hidden}-{args.embed}, {args.prototypes} prototypes: "
             f"{n_t} tensors, {n_el / 1e6:.2f} M params, fp32, {args.threads} thread(s), torch {torch.__version__}; "
             f"{args.rounds} interleaved rounds after {args.warmup}; load {load0[0]:.2f} -> {load1[0]:.2f}{rev}",
             "", "| variant | median step (ms) | loop / this (median of per-round ratios, range) | "
             "lightly / this |", "|---|---:|---|---|"]
    for n in names:
        vs_loop = [a / b for a, b in zip(times["loop"], times[n])]
        vs_l = [a / b for a, b in zip(times["lightly"], times[n])] if "lightly" in times else []
        lines.append(f"| `{n}` | {statistics.median(times[n]) * 1e3:.1f} | {statistics.median(vs_loop):.2f}x "
                     f"({min(vs_loop):.2f}-{max(vs_loop):.2f}) | "
                     + (f"{statistics.median(vs_l):.2f}x ({min(vs_l):.2f}-{max(vs_l):.2f})" if vs_l else "-") + " |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n\n")


if __name__ == "__main__":
    main()
