"""Whole jobs as users launch them (torchrun + fsdp, the deepspeed launcher + ZeRO-2) on 2 CPU ranks, killed
the way schedulers and hardware kill them:

- kill -9 of the whole process tree at a random moment after the first checkpoint (possibly mid-save,
  the saves run in the background): every process of the job recorded before the kill is gone; then
  ``--resume``: the losses and the whole final checkpoint (weights, BN buffers, LARS momentum, trainer
  state, RNG; tests/state_compare.py) equal the uninterrupted run's bitwise (same world size, same
  backend: the resumed ranks continue the same computation on the same kernels);
- kill -9 of ONE worker: the launcher ends the job (every recorded process gone) within seconds, and
  ``--resume`` continues exactly (same comparison);
- a rank that hangs (SIGSTOP) instead of dying: the others give up after ``--collective_timeout_s`` with a
  line naming the stuck rank, and the job ends (every recorded process gone).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from tests.jobs import (
    BIN,
    alive,
    deepspeed,
    descendants,
    kill_recorded,
    kill_tree,
    launch,
    losses,
    rank_of,
    snapshot,
    torchrun,
    wait_for,
    workers,
)
from tests.state_compare import assert_same_state, load_state, step_dir

pytestmark = pytest.mark.slow  # an end-to-end job: not in the fast tier (-m 'not slow')

STEPS = 8
COMMON = ["--max_steps", str(STEPS), "--checkpoint_every", "1", "--keep_last", "3", "--batch_size", "4"]


def _ds_json(tmp: Path) -> str:
    """One file for the module (pytest's base temp dir): the reference and the resumed runs name the same
    --deepspeed_config, so their saved configs are equal."""
    from bigseer.parallel.ds_json import load_ds_config

    cfg = dict(load_ds_config("zero2_fp32"), train_micro_batch_size_per_gpu=4)
    path = tmp.parent / "zero2_b4.json"
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
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """kind -> the uninterrupted run's output dir (its final checkpoint is kept: the final save)."""
    out = {}
    for kind in ("fsdp", "deepspeed"):
        root = tmp_path_factory.mktemp(f"ref_{kind}")
        cmd, args = _job(kind, root)
        proc = launch(cmd, root / "run", *args)
        assert _finish(proc) == 0, (root / "run.log").read_text()[-3000:]
        out[kind] = root / "run"
        assert sorted(losses(out[kind])) == list(range(1, STEPS + 1))
    return out


def _same_as_reference(run: Path, ref: Path, what: str) -> None:
    """The losses of every step and the whole final checkpoint equal the uninterrupted run's, bitwise."""
    got, want = losses(run), losses(ref)
    assert [got[s] for s in range(1, STEPS + 1)] == [want[s] for s in range(1, STEPS + 1)], what
    assert_same_state(load_state(run, STEPS), load_state(ref, STEPS), what, other_process=True)


def _latest(run: Path) -> int:
    p = run / "checkpoints" / "latest"
    return int(p.read_text().strip().split("_")[1]) if p.is_file() else 0


def _resume(cmd: list[str], args: list[str], run: Path) -> None:
    proc = launch(cmd, run, *args, "--resume")
    assert _finish(proc) == 0, run.with_suffix(".log").read_text()[-3000:]
    assert "resumed from" in run.with_suffix(".log").read_text()


@pytest.mark.parametrize("kind", ["fsdp", "deepspeed"])
def test_kill_9_of_the_whole_job_then_resume_is_bitwise(reference, tmp_path: Path, kind: str) -> None:
    """Every process of the job (recorded with its start time before the kill) is gone within 10 s of the
    kill, and none logged or checkpointed a step after it; the resumed run ends with the uninterrupted
    run's losses and final checkpoint, bitwise."""
    rng = random.Random()
    cmd, args = _job(kind, tmp_path)
    for attempt in range(4):  # retry (shorter delay) if the run finished before the kill landed
        run = tmp_path / f"attempt{attempt}"
        proc = launch(cmd, run, *args)
        assert wait_for(lambda: _latest(run) >= 1 or proc.poll() is not None, 240)
        time.sleep(rng.uniform(0.0, 1.0) / (attempt + 1))  # possibly while a background save is in flight
        victims = workers(proc.pid)
        tree = snapshot([proc.pid, *descendants(proc.pid), *victims])
        try:
            kill_tree(proc.pid)
            proc.wait()
            latest, logged = _latest(run), len(losses(run))
            # the final checkpoint must be the resumed run's own (a committed step dir is never replaced)
            if 0 < latest < STEPS and not step_dir(run, STEPS).exists():
                assert len(victims) == 2 and set(victims) <= set(tree), (victims, tree)
                assert wait_for(lambda: not alive(tree), 10), f"still running after kill -9: {alive(tree)}"
                # gone because killed, not because a survivor finished the job meanwhile
                assert (_latest(run), len(losses(run))) == (latest, logged), "the job went on after kill -9"
                break
        finally:
            kill_recorded(tree)
    else:
        pytest.fail("the job always finished before it could be killed")
    _resume(cmd, args, run)
    _same_as_reference(run, reference[kind], kind)


@pytest.mark.parametrize("kind", ["fsdp", "deepspeed"])
def test_a_lost_rank_ends_the_job_and_resume_continues(reference, tmp_path: Path, kind: str) -> None:
    """kill -9 of one worker: the launcher exits non-zero within 20 s and every process of the job (recorded
    before) is gone; the resumed run ends with the uninterrupted losses and final checkpoint, bitwise."""
    cmd, args = _job(kind, tmp_path)
    run = tmp_path / "run"
    proc = launch(cmd, run, *args)
    assert wait_for(lambda: _latest(run) >= 2 or proc.poll() is not None, 240)
    victims = workers(proc.pid)
    assert len(victims) == 2, victims
    tree = snapshot([proc.pid, *descendants(proc.pid), *victims])
    try:
        t0 = time.time()
        kill_tree(victims[-1])  # one worker dies (and only it)
        rc = _finish(proc, timeout=60)
        ended_after = time.time() - t0
        assert rc != 0 and ended_after < 20, (rc, ended_after)  # typically ~2 s; generous for a loaded CI machine
        assert wait_for(lambda: not alive(tree), 10), f"the job left processes running: {alive(tree)}"
    finally:
        kill_recorded(tree)
    _resume(cmd, args, run)
    _same_as_reference(run, reference[kind], kind)


def test_a_stuck_rank_ends_the_job_with_a_line_naming_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = launch(torchrun(2), run, "--backend", "ddp", "--collective_timeout_s", "5", *COMMON[:2],
                  "--max_steps", "1000", "--checkpoint_every", "0", "--batch_size", "4")
    tree: dict[int, int] = {}
    try:
        assert wait_for(lambda: len(losses(run)) >= 2 or proc.poll() is not None, 240)
        victims = workers(proc.pid)
        assert len(victims) == 2, victims
        tree = snapshot([proc.pid, *descendants(proc.pid), *victims])
        rank = rank_of(victims[-1])
        os.kill(victims[-1], signal.SIGSTOP)  # alive but not progressing
        rc = proc.wait(timeout=120)
        assert wait_for(lambda: not alive(tree), 10), f"the job left processes running: {alive(tree)}"
    finally:
        kill_tree(proc.pid)
        kill_recorded(tree)  # the launcher may be reaped already: its tree is no longer found below it
    log = run.with_suffix(".log").read_text()
    assert rc != 0
    assert "waited 5 s in a collective" in log and f"rank {rank} (last finished step" in log, log[-3000:]
    assert "stopped making progress (stuck or dead); ending the job" in log


def test_torchrun_restarts_a_failed_job_and_it_continues_by_itself(reference, tmp_path: Path) -> None:
    """An elastic torchrun (--nnodes 1:2 --max-restarts) restarts the workers after one dies; with
    --resume auto they continue from `latest` and the run ends with the uninterrupted losses and final
    checkpoint, bitwise."""
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
    _same_as_reference(run, reference["fsdp"], "torchrun restart")
