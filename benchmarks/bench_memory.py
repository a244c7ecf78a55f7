"""Peak memory per rank: ddp (baseline) vs fsdp (FSDP2) vs DeepSpeed ZeRO-2 / ZeRO-3, 2 CPU gloo ranks.

Each backend runs in its own pair of spawned processes: build a RegNetY trunk + linear probe head
(cross-entropy on random labels), wrap it with ``bigseer.parallel.setup``, run a few SGD steps.
Measured: peak RSS (VmHWM) minus the RSS before the model was built, per rank (max over ranks); for
ddp/fsdp also the bytes of tensors held in one step (``bigseer.plan.measure_step_memory``: params,
grads, optimizer state, saved activations, buffers); next to ``bigseer.plan.plan_memory``'s prediction.

    DS_ACCELERATOR=cpu .venv/bin/python benchmarks/bench_memory.py --model regnety_800mf --batch 8 --size 128
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bigseer.models import build_regnet  # noqa: E402
from bigseer.plan import plan_memory  # noqa: E402
from tests.distributed_utils import run_distributed  # noqa: E402

CLASSES = 1000


class Probe(nn.Module):
    def __init__(self, model: str) -> None:
        super().__init__()
        self.trunk = build_regnet(model)
        self.head = nn.Linear(self.trunk.num_features, CLASSES)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self.head(self.trunk(x)).float(), y)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def _rank(rank: int, world: int, backend: str, model: str, batch: int, size: int, steps: int) -> dict:
    import deepspeed  # noqa: F401  (imported before the baseline by every backend, so code pages are not counted)
    import torch.distributed.checkpoint  # noqa: F401
    import torch.distributed.fsdp  # noqa: F401

    from bigseer import parallel
    from bigseer.plan import measure_step_memory

    torch.manual_seed(0)
    base = _rss_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    kw = {}
    if backend.startswith("zero"):
        kw = dict(backend="deepspeed", ds_config=f"{backend}_fp32")
    else:
        kw = dict(backend=backend)
    p = parallel.setup(Probe(model), optimizer_factory=lambda g: torch.optim.SGD(g, lr=0.01, momentum=0.9), **kw)
    g = torch.Generator().manual_seed(rank)
    for _ in range(steps):
        x = torch.randn(batch, 3, size, size, generator=g)
        y = torch.randint(0, CLASSES, (batch,), generator=g)
        loss = p.forward(x, y)
        p.backward(loss)
        p.step()
        p.zero_grad()
    peak = (_rss_kib("VmHWM") - base) / 1024
    tensors = None
    if not backend.startswith("zero"):  # DeepSpeed keeps its partitions outside optimizer.state
        tensors = sum(measure_step_memory(p, lambda: p.forward(x, y)).values()) / 2 ** 20
    return {"peak_mib": peak, "tensor_mib": tensors}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="regnety_800mf")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--backends", default="ddp,fsdp,zero2,zero3")
    args = ap.parse_args()
    rows = []
    for backend in args.backends.split(","):
        res = run_distributed(_rank, 2, (backend, args.model, args.batch, args.size, args.steps))
        peak = max(r["peak_mib"] for r in res)
        tensors = max(r["tensor_mib"] for r in res) if res[0]["tensor_mib"] is not None else None
        pl = plan_memory(args.model, world_size=2, backend="deepspeed" if backend.startswith("zero") else backend,
                         zero_stage=int(backend[-1]) if backend.startswith("zero") else 2, batch_per_gpu=args.batch,
                         crops=f"1x{args.size}", head_dims=(), prototypes=CLASSES)
        rows.append((backend, peak, tensors, pl.total / 2 ** 20))
    ddp = rows[0][1]
    print(f"model {args.model}, 2 ranks, batch/rank {args.batch}, {args.size}px, {args.steps} SGD steps, fp32")
    print("| backend | peak RSS growth / rank (MiB) | vs ddp | tensors held in a step (MiB) | plan total (MiB) |"
          " plan / tensors | plan / RSS |")
    print("|---|---|---|---|---|---|---|")
    for backend, peak, tensors, plan in rows:
        t = f"{tensors:.0f}" if tensors is not None else "n/a"
        r = f"{plan / tensors:.2f}" if tensors is not None else "n/a"
        print(f"| {backend} | {peak:.0f} | {peak / ddp:.2f} | {t} | {plan:.0f} | {r} | {plan / peak:.2f} |")


if __name__ == "__main__":
    main()
