"""Benchmark: bigseer.ssl.swav_loss forward+backward vs lightly's SwaVLoss on the same scores.

Both configured identically: temperature 0.1, Sinkhorn epsilon 0.05, 3 iterations, crops 0 and 1 as the
assignment crops (lightly: the first two crops are its "high resolution" outputs, which it always uses as
the assignment crops; the rest are "low resolution"). Scores are cosine similarities of random unit
embeddings with random unit prototypes, fp32. Timings are interleaved (ours, lightly, ours, ...) and the
median is reported; max |diff| compares loss and every crop's score gradient.

    .venv/bin/python benchmarks/bench_swav_loss.py --repeats 20 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from bigseer.ssl import swav_loss

CONFIGS = [  # (label, number of crops, batch, prototypes)
    ("8 crops (2+6) x 256 x 3000", 8, 256, 3000),
    ("6 crops (2+4) x 64 x 16384", 6, 64, 16384),
]


def make_scores(num_crops: int, batch: int, k: int, dim: int = 128, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    protos = F.normalize(torch.randn(k, dim, generator=g), dim=1)
    return [F.normalize(torch.randn(batch, dim, generator=g), dim=1) @ protos.t() for _ in range(num_crops)]


def fwd_bwd(fn, scores: list[torch.Tensor]) -> tuple[float, torch.Tensor, list[torch.Tensor]]:
    leaves = [s.clone().requires_grad_() for s in scores]
    t0 = time.perf_counter()
    loss = fn(leaves)
    loss.sum().backward()
    dt = time.perf_counter() - t0
    return dt, loss.detach().reshape(()), [x.grad for x in leaves]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        from lightly.loss import SwaVLoss
    except ImportError:
        print("lightly is not installed: .venv/bin/python -m pip install --no-deps lightly", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    tau, eps, iters = 0.1, 0.05, 3
    lightly_loss = SwaVLoss(temperature=tau, sinkhorn_iterations=iters, sinkhorn_epsilon=eps)
    ours = lambda s: swav_loss(s, tau, eps, iters, crops_for_assign=(0, 1))  # noqa: E731
    theirs = lambda s: lightly_loss(s[:2], s[2:])  # noqa: E731
    print(f"torch {torch.__version__}, threads {args.threads}, repeats {args.repeats} (median)")
    print(f"| {'config':<28} | {'bigseer ms':>10} | {'lightly ms':>10} | {'lightly/bigseer':>15} "
          f"| {'max|dloss|':>10} | {'max|dgrad|':>10} | {'max|grad|':>9} |")
    print("|" + "|".join("-" * (w + 2) for w in (28, 10, 10, 15, 10, 10, 9)) + "|")
    for label, v, b, k in CONFIGS:
        scores = make_scores(v, b, k)
        for _ in range(args.warmup):
            fwd_bwd(ours, scores)
            fwd_bwd(theirs, scores)
        t_ours, t_theirs = [], []
        for _ in range(args.repeats):
            t_ours.append(fwd_bwd(ours, scores)[0])
            t_theirs.append(fwd_bwd(theirs, scores)[0])
        _, l_ours, g_ours = fwd_bwd(ours, scores)
        _, l_theirs, g_theirs = fwd_bwd(theirs, scores)
        d_loss = (l_ours - l_theirs).abs().item()
        d_grad = max((a - c).abs().max().item() for a, c in zip(g_ours, g_theirs))
        g_max = max(a.abs().max().item() for a in g_ours)
        m_ours, m_theirs = statistics.median(t_ours) * 1e3, statistics.median(t_theirs) * 1e3
        print(f"| {label:<28} | {m_ours:>10.2f} | {m_theirs:>10.2f} | {m_theirs / m_ours:>15.2f} "
              f"| {d_loss:>10.2e} | {d_grad:>10.2e} | {g_max:>9.2e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
