"""Elastic resume through the engine on gloo: a checkpoint written by N ranks under one backend continues on
M ranks under any backend with the uninterrupted run's losses, step by step the same sample ids, and the
same final checkpoint (tests/state_compare.py: weights, BN buffers, LARS momentum, queue, trainer state).

With global SyncBN the run is the same computation on every world size; what differs is the summation
order of the all-reduces. The tolerances are derived from that (tests/numerics.py explains the factor 8):
losses within 8 x the largest per-step difference between the uninterrupted 1-process and 2-rank runs plus
a few fp32 ulps; each floating tensor of the final state within 8 x its 1-process vs 2-rank difference plus
the update-proportional allowance. Sample ids, step, samples, lanes, queue ages and BN batch counts must be
equal exactly. Sharded prototypes and a non-empty queue are in the ddp/fsdp runs (the queue holds 2 steps
and is in use from step 3 on; the resume point is step 3, so steps 4-6 need the restored queue).

A transition's first run is the same job as a reference run or as another transition's first run
(same backend, world size and config), so it runs once and its directory is copied (bytes the same
job would write again)."""

from __future__ import annotations

import json
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

pytestmark = [pytest.mark.numerics, pytest.mark.slow]

G, STEPS, CUT = 8, 6, 3
BASE = dict(model="regnety_test", crops="2x32+2x16", head_dims=(32,), embed_dim=16, num_prototypes=32,
            max_steps=STEPS, warmup_steps=1, seed=5, syncbn_group_size=-1, export=False, log_samples=True,
            async_checkpoint=True)
RUNS = {  # name -> (backend, extra config); "q": with a queue (the runs compared with ref1 / ref2)
    "ddp": ("ddp", dict(shard_prototypes=True, queue=True)),
    "ddp_plain": ("ddp", dict(shard_prototypes=True)),  # "ddp" without the queue
    "fsdp": ("fsdp", dict(shard_prototypes=True, queue=True)),
    "fsdp_plain": ("fsdp", dict(shard_prototypes=True)),
    "ddp_replicated": ("ddp", dict(queue=True)),
    "zero1": ("deepspeed", dict(ds_config="zero1_fp32")),
    "zero2": ("deepspeed", dict(ds_config="zero2_fp32")),
    "zero2_q": ("deepspeed", dict(ds_config="zero2_fp32", queue=True)),  # DeepSpeed cannot shard prototypes
    "zero3": ("deepspeed", dict(ds_config="zero3_fp32")),
}
PLAN = {  # transition -> (first run, its world, resumed run, its world, with a queue)
    "ddp_2to1": ("ddp", 2, "ddp", 1, True), "ddp_1to2": ("ddp", 1, "ddp", 2, True),
    "ddp_2to4": ("ddp", 2, "ddp", 4, True), "ddp_4to2": ("ddp", 4, "ddp", 2, True),
    "fsdp_2to1": ("fsdp", 2, "fsdp", 1, True), "fsdp_1to2": ("fsdp", 1, "fsdp", 2, True),
    "fsdp_2to4": ("fsdp", 2, "fsdp", 4, True), "fsdp_4to2": ("fsdp", 4, "fsdp", 2, True),
    "zero1_2to1": ("zero1", 2, "zero1", 1, False), "zero2_2to1": ("zero2", 2, "zero2", 1, False), "zero2_1to2": ("zero2", 1, "zero2", 2, False),
    "zero3_2to1": ("zero3", 2, "zero3", 1, False), "zero3_1to2": ("zero3", 1, "zero3", 2, False),
    "fsdp_to_zero2": ("fsdp", 2, "zero2_q", 2, True), "zero3_to_fsdp": ("zero3", 2, "fsdp_plain", 2, False),
}


def _ds_json(name: str, out: Path) -> str:
    """The shipped config without its batch fields (these runs choose the per-rank batch themselves)."""
    from bigseer.parallel.ds_json import load_ds_config

    cfg = {k: v for k, v in load_ds_config(name).items() if k != "train_micro_batch_size_per_gpu"}
    path = out.parent / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def _cfg(name: str, world: int, out: Path, max_steps: int, resume: str = "no") -> PretrainConfig:
    backend, extra = RUNS[name]
    extra = dict(extra)
    if "ds_config" in extra:
        extra["ds_config"] = _ds_json(extra["ds_config"], out)
    queue = extra.pop("queue", False)
    kw = dict(BASE, **extra, backend=backend, output_dir=str(out), max_steps=max_steps, resume=resume,
              batch_size=G // world, checkpoint_every=CUT)
    if queue:
        kw["queue_length"] = 2 * (G // world)  # 2 steps of embeddings per rank
    if backend == "deepspeed":
        kw.pop("backend")
    return PretrainConfig(**kw)


def _phase(rank: int, world: int, jobs: list[tuple[str, str, int, str]]) -> None:
    for name, out, max_steps, resume in jobs:
        pretrain(_cfg(name, world, Path(out), max_steps, resume))


def _run(world: int, jobs: list[tuple[str, str, int, str]]) -> None:
    if world == 1:
        _phase(0, 1, jobs)
    else:
        run_distributed(_phase, world, args=(jobs,))


REFS = {"ref1": ("ddp", 1), "ref2": ("ddp", 2), "ref1_ds": ("zero2", 1), "ref2_ds": ("zero2", 2),
        "rep2": ("ddp_replicated", 2), "ref1_plain": ("ddp_plain", 1)}  # uninterrupted runs: name -> (run, world)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import shutil

    root = tmp_path_factory.mktemp("elastic")
    d = {k: root / k for k in REFS}
    source = {v: d[k] for k, v in REFS.items()}  # (run, world) -> the dir of an uninterrupted run of it
    for a, wa, *_ in PLAN.values():
        source.setdefault((a, wa), root / f"first_{a}_{wa}")
    first: dict[int, list] = {1: [], 2: [], 4: []}
    second: dict[int, list] = {1: [], 2: [], 4: []}
    for (name, world), out in source.items():
        first[world].append((name, str(out), STEPS, "no"))
    for key, (_, _, b, wb, _) in PLAN.items():
        d[key] = root / key
        second[wb].append((b, str(d[key]), STEPS, "latest"))
    for world in (1, 2, 4):
        _run(world, first[world])
    for key, (a, wa, *_) in PLAN.items():
        shutil.copytree(source[(a, wa)], d[key])
        preempt_after(d[key], CUT)
    for world in (1, 2, 4):
        _run(world, second[world])
    return d


@pytest.fixture(scope="module")
def states(runs: dict[str, Path]) -> dict[str, dict]:
    """The final checkpoint of every run (tests/state_compare.py), and the step-0 state as ``init``."""
    out = {k: load_state(v, STEPS) for k, v in runs.items() if not k.startswith("first_")}
    out["init"] = initial_state(_cfg("ddp", 1, runs["ref1"], STEPS), out["ref1"])
    return out


def _tolerance(runs: dict[str, Path], ref1: str, ref2: str) -> float:
    a, b = step_records(runs[ref1]), step_records(runs[ref2])
    diff = max(abs(a[s]["loss"] - b[s]["loss"]) for s in range(1, STEPS + 1))
    return 8 * diff + 16 * torch.finfo(torch.float32).eps * max(abs(a[s]["loss"]) for s in a)


@pytest.mark.parametrize("key", list(PLAN))
def test_resume_on_another_world_size_or_backend_continues_the_run(runs: dict[str, Path], states: dict[str, dict],
                                                                   key: str) -> None:
    """Same sample ids every step; losses within the derived tolerance of the 1-process run; the final
    checkpoint within the derived per-tensor fp32 bound of it (1-process vs 2-rank difference), every
    non-floating item (step, samples, lanes, schedule, queue ages, BN batch counts, ...) equal."""
    with_queue = PLAN[key][4]
    ref_name, other_name = ("ref1", "ref2") if with_queue else ("ref1_ds", "ref2_ds")
    ref = step_records(runs[ref_name])
    tol = _tolerance(runs, ref_name, other_name)
    got = step_records(runs[key])
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert got[step]["samples"] == ref[step]["samples"], (key, step)  # none replayed, none skipped
        assert abs(got[step]["loss"] - ref[step]["loss"]) <= tol, (key, step, got[step]["loss"], ref[step]["loss"], tol)
    assert ref[STEPS]["loss"] != ref[1]["loss"]
    assert_state_within_fp32_error(states[key], states[ref_name], states[other_name], states["init"], key)


def test_references_agree_and_the_queue_matters(runs: dict[str, Path]) -> None:
    """The 1-process and 2-rank uninterrupted runs read the same samples and agree within 1e-3. The queue
    matters: the queue-free 1-process run reads the same samples and has the queue run's losses within
    the tolerance while the queue fills (steps 1-2), but at every step where the queue is in use (3-6: the
    resume point is 3) it differs by more than the tolerance the resumed queue runs are held to, so a
    resume that lost the queue would fail the test above."""
    a, b, plain = step_records(runs["ref1"]), step_records(runs["ref2"]), step_records(runs["ref1_plain"])
    assert all(a[s]["samples"] == b[s]["samples"] == plain[s]["samples"] for s in a)
    tol = _tolerance(runs, "ref1", "ref2")
    assert tol < 1e-3
    assert all(abs(a[s]["loss"] - plain[s]["loss"]) <= tol for s in (1, 2)), (a, plain, tol)
    assert all(abs(a[s]["loss"] - plain[s]["loss"]) > tol for s in range(CUT, STEPS + 1)), (a, plain, tol)


def test_sharded_prototypes_export_whole_and_match_a_replicated_run(runs: dict[str, Path], tmp_path: Path) -> None:
    """2-rank ddp with --shard_prototypes: the export holds all K rows (each rank held K/2), and the run equals
    a replicated-prototype run up to the fp32 error scale of the world-size change (1 vs 2 ranks)."""
    from safetensors.torch import load_file

    from bigseer.export import export_checkpoint

    protos = {}
    for name in ("ref1", "ref2", "rep2"):
        export_checkpoint(runs[name], tmp_path / name, include_head=True)
        protos[name] = load_file(str(tmp_path / name / "model.safetensors"))["head.prototypes.0.weight"]
    assert protos["ref2"].shape == (32, 16)  # all 32 prototypes, not one rank's 16
    torch.testing.assert_close(protos["ref2"].norm(dim=1), torch.ones(32))
    bound = 8 * (protos["ref1"] - protos["ref2"]).norm() + 1e-6 * protos["ref1"].norm()
    assert (protos["ref2"] - protos["rep2"]).norm() <= bound
    tol = _tolerance(runs, "ref1", "ref2")
    a, b = step_records(runs["ref2"]), step_records(runs["rep2"])
    assert all(abs(a[s]["loss"] - b[s]["loss"]) <= tol for s in a)


def test_dcp_to_torch_save_reads_an_engine_checkpoint(runs: dict[str, Path], tmp_path: Path) -> None:
    """PyTorch's own converter reads the elastic format (written here by 2 fsdp ranks, resumed from 4) into one
    torch.save file whose ``model.*`` tensors are the exported trunk: no bigseer needed to get the weights."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from bigseer.checkpoint.directory import find_latest, read_meta
    from bigseer.export import load_pretrained

    step_dir = find_latest(runs["fsdp_4to2"] / "checkpoints")
    meta = read_meta(step_dir)
    assert meta["format"] == "elastic" and meta["world_size"] == 2 and meta["backend"] == "fsdp"
    dcp_to_torch_save(step_dir / "state", tmp_path / "full.pt")
    full = torch.load(tmp_path / "full.pt", weights_only=True)
    trunk = {k[len("model.trunk."):]: v for k, v in full.items() if k.startswith("model.trunk.")}
    ours = load_pretrained(runs["fsdp_4to2"]).state_dict()
    assert set(trunk) == set(ours)
    assert all(torch.equal(trunk[k], ours[k]) for k in ours)  # the same bytes, whole (not one rank's shard)
