"""Gradient accumulation through the engine on gloo: ``--accumulate N`` is N times the ranks.

- 1 rank x ``--accumulate 2`` against 2 ranks (no SyncBN, same global batch 8, seed and queue): the same sample
  ids at every step (exact), losses within the derived tolerance, the final checkpoint (weights, BN buffers,
  LARS momentum, queue, trainer state) within the derived fp32 bound of tests/state_compare.py.
- Elastic: 2 ranks -> 1 rank x 2 and 1 rank x 2 -> 2 ranks continue the uninterrupted run the same way.
- SyncBN: 2 ranks x 2 with SyncBN over the 2 ranks against 4 ranks in SyncBN groups of 2. Micro-batch ``m`` of
  every rank is virtual rank ``m*W + r`` (bigseer.data.stream), so SyncBN over the 2 real ranks normalises
  exactly the samples a group {2m, 2m+1} of the 4-rank run normalises: the same maths.

Tolerances (tests/numerics.py): the reference computation run twice in two summation orders (replicated and
sharded prototypes; for SyncBN the accumulated run on ddp, and on fsdp with sharded prototypes) gives the fp32
error scale; losses within 8x their largest
difference plus a few ulps, final states within :func:`assert_state_within_fp32_error`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from bigseer.config import PretrainConfig
from bigseer.engine import pretrain
from tests.distributed_utils import run_distributed
from tests.state_compare import (
    assert_state_within_fp32_error,
    initial_state,
    load_state,
    preempt_after,
    step_records,
)

pytestmark = [pytest.mark.slow]

G, STEPS, CUT = 8, 4, 2
BASE = dict(model="regnety_test", crops="2x32+2x16", head_dims=(32,), embed_dim=16, num_prototypes=32,
            max_steps=STEPS, warmup_steps=1, seed=5, export=False, log_samples=True, recipe="none",
            checkpoint_every=CUT)
# name -> (world, backend, accumulate, syncbn_group_size, shard_prototypes); every run has a queue of 2 steps
# per lane. The "_shard" runs compute the same with the prototypes sharded over the ranks: Sinkhorn's sums run
# over other axes in another order, the fp32 error scale of the codes the tolerances need.
RUNS = {
    "ddp2": (2, "ddp", 1, 0, False), "ddp2_shard": (2, "ddp", 1, 0, True), "acc1x2": (1, "none", 2, 0, False),
    "sb4": (4, "ddp", 1, 2, False), "sb2x2": (2, "ddp", 2, -1, False), "sb2x2_shard": (2, "fsdp", 2, -1, True),
    "e2to1x2": (1, "none", 2, 0, False), "e1x2to2": (2, "ddp", 1, 0, False),
    "zero2_1x2": (1, "deepspeed", 2, 0, False),  # DeepSpeed's own gradient_accumulation_steps, from its JSON
}
RESUMED = {"e2to1x2": "ddp2", "e1x2to2": "acc1x2"}  # resumed run -> the run whose step-CUT checkpoint it continues


def _cfg(name: str, out: Path, resume: str = "no") -> PretrainConfig:
    world, backend, acc, syncbn, shard = RUNS[name]
    batch = G // (world * acc)
    kw: dict = {"backend": backend, "accumulate": acc}
    if backend == "deepspeed":  # the JSON's gradient_accumulation_steps says it (no --accumulate): the same thing
        kw = {"ds_config": _ds_json(out, acc)}
    return PretrainConfig(**BASE, **kw, output_dir=str(out), resume=resume, batch_size=batch,
                          syncbn_group_size=syncbn, queue_length=2 * batch, shard_prototypes=shard)


def _ds_json(out: Path, gas: int) -> str:
    """The shipped zero2_fp32 config with ``gradient_accumulation_steps`` and no batch fields."""
    from bigseer.parallel.ds_json import load_ds_config

    cfg = {k: v for k, v in load_ds_config("zero2_fp32").items() if k != "train_micro_batch_size_per_gpu"}
    path = out.parent / f"zero2_gas{gas}.json"
    path.write_text(json.dumps({**cfg, "gradient_accumulation_steps": gas}))
    return str(path)


def _phase(rank: int, world: int, jobs: list[tuple[str, str, str]]) -> None:
    for name, out, resume in jobs:
        pretrain(_cfg(name, Path(out), resume))


def _run(world: int, jobs: list[tuple[str, str, str]]) -> None:
    if not jobs:
        return
    if world == 1:
        _phase(0, 1, jobs)
    else:
        run_distributed(_phase, world, args=(jobs,), timeout_s=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("accumulate")
    d = {k: root / k for k in RUNS}
    for world in (1, 2, 4):
        _run(world, [(k, str(d[k]), "no") for k, v in RUNS.items() if v[0] == world and k not in RESUMED])
    for key, source in RESUMED.items():
        shutil.copytree(d[source], d[key])
        preempt_after(d[key], CUT)
    for world in (1, 2):
        _run(world, [(k, str(d[k]), "latest") for k in RESUMED if RUNS[k][0] == world])
    return d


def _tolerance(a: dict[int, dict], b: dict[int, dict]) -> float:
    diff = max(abs(a[s]["loss"] - b[s]["loss"]) for s in range(1, STEPS + 1))
    return 8 * diff + 16 * torch.finfo(torch.float32).eps * max(abs(a[s]["loss"]) for s in a)


# items that differ by construction between a run of W ranks x N micro-batches and one of W*N ranks
LAYOUT = {
    "meta/config/accumulate": "micro-batches per step: the layout compared (trainer/global_batch is compared)",
    "meta/config/ds_config": "the DeepSpeed run's JSON (None for ddp)",
    "meta/config/backend": "auto for the DeepSpeed run (resolved from its JSON)",
    "meta/config/syncbn_group_size": "the SyncBN group in real ranks (2 ranks x 2 micro-batches vs groups of 2 of 4)",
}


@pytest.mark.parametrize("got, ref, other", [("acc1x2", "ddp2", "ddp2_shard"), ("e2to1x2", "ddp2", "ddp2_shard"),
                                             ("e1x2to2", "ddp2", "ddp2_shard"), ("sb4", "sb2x2", "sb2x2_shard"),
                                             ("zero2_1x2", "ddp2", "ddp2_shard")])
def test_accumulation_is_more_ranks(runs: dict[str, Path], got: str, ref: str, other: str) -> None:
    """Same sample ids at every step; losses within the tolerance derived from ``ref`` vs ``other`` (the same
    computation in two summation orders); the final checkpoint within the derived fp32 bound of ``ref``'s, every
    non-floating item (step, samples, lanes, queue ages, BN batch counts) equal."""
    a, b, c = step_records(runs[got]), step_records(runs[ref]), step_records(runs[other])
    tol = _tolerance(b, c)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for s in range(1, STEPS + 1):
        assert a[s]["samples"] == b[s]["samples"] == c[s]["samples"], (got, s)
        assert abs(a[s]["loss"] - b[s]["loss"]) <= tol, (got, s, a[s]["loss"], b[s]["loss"], tol)
    states = {k: load_state(runs[k], STEPS) for k in (got, ref, other)}
    init = initial_state(_cfg(ref, runs[ref]), states[ref])
    assert_state_within_fp32_error(states[got], states[ref], states[other], init, got, differ=LAYOUT)


def _overflow_rank(rank: int, world: int) -> dict:
    """fp16 (GradScaler, on CPU), 2 ranks x 2 micro-batches: an inf planted in one gradient of micro-batch 1 on
    rank 0 only (a hook on the parameter, before DDP's reduction) must skip the whole step on both ranks."""
    from bigseer import parallel
    from bigseer.trainer import accumulated_swav_step, build_swav_model, lars_factory

    cfg = PretrainConfig(**{**BASE, "queue_length": 0}, batch_size=2, accumulate=2)
    par = parallel.setup(build_swav_model(cfg), backend="ddp", precision="fp16",
                         optimizer_factory=lars_factory(cfg, 0.1))
    par.load_scaler_state({"scale": 16.0, "growth_tracker": 0})
    gen = torch.Generator().manual_seed(rank)
    micros = [[torch.randn(2, 2, 3, 32, 32, generator=gen), torch.randn(2, 2, 3, 16, 16, generator=gen)]
              for _ in range(2)]
    weight = par.unwrapped.trunk.stem.conv.weight
    calls = []

    def plant(grad: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if rank == 0 and len(calls) == 2:  # micro-batch 1 of rank 0
            grad = grad.clone()
            grad.view(-1)[0] = float("inf")
        return grad

    handle = weight.register_hook(plant)
    before = {k: v.clone() for k, v in par.full_state_dict().items()}
    _, stepped = accumulated_swav_step(par, micros, 0.1)
    after = par.full_state_dict()
    handle.remove()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    # BN statistics move (the forwards ran); the prototype rows are put back on the unit sphere after every step,
    # applied or not (a rounding-level change), as without accumulation
    changed = [k for k in moved if "running" not in k and "num_batches" not in k and "prototypes" not in k]
    changed += [k for k in moved if "prototypes" in k and not torch.allclose(before[k], after[k], atol=1e-6, rtol=0)]
    _, stepped_next = accumulated_swav_step(par, micros, 0.1)
    return {"stepped": stepped, "changed": changed, "scale": par.loss_scale, "calls": len(calls),
            "stepped_next": stepped_next}


def test_overflow_in_one_micro_batch_on_one_rank_skips_the_step_everywhere() -> None:
    """Both ranks skip the accumulated step (no weight moves), halve the scale once, and step the next time."""
    results = run_distributed(_overflow_rank, 2)
    for r in results:
        assert r["calls"] == 2 and not r["stepped"] and r["changed"] == [] and r["scale"] == 8.0, r
        assert r["stepped_next"], r


def test_planner_counts_one_micro_batch() -> None:
    """``--accumulate N`` keeps the activations of one micro-batch and adds the held scores of all N."""
    from bigseer.plan import plan_memory

    one = plan_memory("regnety_test", batch_per_gpu=4, crops="2x32+2x16", head_dims=(32,), prototypes=32)
    acc = plan_memory("regnety_test", batch_per_gpu=4, crops="2x32+2x16", head_dims=(32,), prototypes=32,
                      accumulate=4)
    big = plan_memory("regnety_test", batch_per_gpu=16, crops="2x32+2x16", head_dims=(32,), prototypes=32)
    assert acc.activations == one.activations < big.activations
    assert acc.global_batch == big.global_batch == 16
    assert acc.transient - one.transient == 2 * 4 * 4 * 32 * 4 + 2 * one.buffers
