"""Whole jobs as users launch them (torchrun + fsdp, the deepspeed launcher + ZeRO-2) on 2 CPU ranks, killed
the way schedulers and hardware kill them:

- kill -9 of the whole process tree at a random moment after the first checkpoint (possibly mid-save,
  the saves run in the background), then ``--resume``: the losses equal the uninterrupted run's bitwise
  (same world size, same backend: the resumed ranks continue the same computation on the same kernels);
- kill -9 of ONE worker: the launcher ends the job within seconds, and ``--resume`` continues exactly;
- a rank that hangs (SIGSTOP) instead of dying: the others give up after ``--collective_timeout_s`` with a
  line naming the stuck rank, and the job ends.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from tests.jobs import BIN, deepspeed, kill_tree, launch, losses, rank_of, torchrun, wait_for, workers

STEPS = 8
COMMON = ["--max_steps", str(STEPS), "--checkpoint_every", "1", "--keep_last", "3", "--batch_size", "4"]


def _ds_json(tmp: Path) -> str:
    from bigseer.parallel.ds_json import load_ds_config

    cfg = dict(load_ds_config("zero2_fp32"), train_micro_batch_size_per_gpu=4)
    path = tmp / "zero2_b4.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def _job(kind: str, tmp: Path) -> tuple[list[str], list[str]]:
    if kind == "fsdp":
        return torchrun(2), ["--backend", "fsdp", *COMMON]
    return deepspeed(2), ["--deepspeed_config", _ds_json(tmp), *COMMON]


def _finish(proc, timeout: float = 300) -> int:
    try:
        return proc.wait(timeout=timeout)
    except Exception:
        kill_tree(proc.pid)
        raise


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[int, float]]:
    out = {}
    for kind in ("fsdp", "deepspeed"):
        root = tmp_path_factory.mktemp(f"ref_{kind}")
        cmd, args = _job(kind, root)
        proc = launch(cmd, root / "run", *args)
        assert _finish(proc) == 0, (root / "run.log").read_text()[-3000:]
        out[kind] = losses(root / "run")
        assert sorted(out[kind]) == list(range(1, STEPS + 1))
    return out


def _latest(run: Path) -> int:
    p = run / "checkpoints" / "latest"
    return int(p.read_text().strip().split("_")[1]) if p.is_file() else 0


def _resume(cmd: list[str], args: list[str], run: Path) -> dict[int, float]:
    proc = launch(cmd, run, *args, "--resume")
    assert _finish(proc) == 0, run.with_suffix(".log").read_text()[-3000:]
    assert "resumed from" in run.with_suffix(".log").read_text()
    return losses(run)


@pytest.mark.parametrize("kind", ["fsdp", "deepspeed"])
def test_kill_9_of_the_whole_job_then_resume_is_bitwise(reference, tmp_path: Path, kind: str) -> None:
    rng = random.Random()
    cmd, args = _job(kind, tmp_path)
    for attempt in range(4):  # retry (shorter delay) if the run finished before the kill landed
        run = tmp_path / f"attempt{attempt}"
        proc = launch(cmd, run, *args)
        assert wait_for(lambda: _latest(run) >= 1 or proc.poll() is not None, 240)
        time.sleep(rng.uniform(0.0, 1.0) / (attempt + 1))  # possibly while a background save is in flight
        kill_tree(proc.pid)
        proc.wait()
        if 0 < _latest(run) < STEPS:
            break
    else:
        pytest.fail("the job always finished before it could be killed")
    assert wait_for(lambda: not workers(proc.pid), 10)
    got = _resume(cmd, args, run)
    assert [got[s] for s in range(1, STEPS + 1)] == [reference[kind][s] for s in range(1, STEPS + 1)]


@pytest.mark.parametrize("kind", ["fsdp", "deepspeed"])
def test_a_lost_rank_ends_the_job_and_resume_continues(reference, tmp_path: Path, kind: str) -> None:
    cmd, args = _job(kind, tmp_path)
    run = tmp_path / "run"
    proc = launch(cmd, run, *args)
    assert wait_for(lambda: _latest(run) >= 2 or proc.poll() is not None, 240)
    victims = workers(proc.pid)
    assert len(victims) == 2, victims
    t0 = time.time()
    kill_tree(victims[-1])  # one worker dies (and only it)
    rc = _finish(proc, timeout=60)
    ended_after = time.time() - t0
    assert rc != 0 and ended_after < 20, (rc, ended_after)  # typically ~2 s; generous for a loaded CI machine
    assert wait_for(lambda: not workers(proc.pid), 10)
    got = _resume(cmd, args, run)
    assert [got[s] for s in range(1, STEPS + 1)] == [reference[kind][s] for s in range(1, STEPS + 1)]


def test_a_stuck_rank_ends_the_job_with_a_line_naming_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = launch(torchrun(2), run, "--backend", "ddp", "--collective_timeout_s", "5", *COMMON[:2],
                  "--max_steps", "1000", "--checkpoint_every", "0", "--batch_size", "4")
    try:
        assert wait_for(lambda: len(losses(run)) >= 2 or proc.poll() is not None, 240)
        victim = workers(proc.pid)[-1]
        rank = rank_of(victim)
        os.kill(victim, signal.SIGSTOP)  # alive but not progressing
        rc = proc.wait(timeout=120)
    finally:
        kill_tree(proc.pid)
    log = run.with_suffix(".log").read_text()
    assert rc != 0
    assert "waited 5 s in a collective" in log and f"rank {rank} (last finished step" in log, log[-3000:]
    assert "stopped making progress (stuck or dead); ending the job" in log


def test_torchrun_restarts_a_failed_job_and_it_continues_by_itself(reference, tmp_path: Path) -> None:
    """An elastic torchrun (--nnodes 1:2 --max-restarts) restarts the workers after one dies; with
    --resume auto they continue from `latest` and the run ends with the uninterrupted losses."""
    from tests.distributed_utils import free_port

    cmd = [str(BIN / "torchrun"), "--nnodes", "1:2", "--nproc_per_node", "2", "--max-restarts", "2",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}", "--rdzv_conf",
           "last_call_timeout=1", "examples/pretrain.py"]
    _, args = _job("fsdp", tmp_path)
    run = tmp_path / "run"
    proc = launch(cmd, run, *args, "--resume", "auto")
    try:
        assert wait_for(lambda: _latest(run) >= 2 or proc.poll() is not None, 240)
        kill_tree(workers(proc.pid)[-1])
        assert _finish(proc, timeout=300) == 0, run.with_suffix(".log").read_text()[-3000:]
    finally:
        kill_tree(proc.pid)
    log = run.with_suffix(".log").read_text()
    assert "resumed from" in log  # the restarted workers continued from a checkpoint, not from step 0
    got = losses(run)
    assert [got[s] for s in range(1, STEPS + 1)] == [reference["fsdp"][s] for s in range(1, STEPS + 1)]
