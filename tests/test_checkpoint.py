"""Checkpoints on one process: atomic commit, pointer, pruning, RNG, async saves, crash safety, clear errors.

(Multi-rank resharding through the engine is tests/test_elastic.py; pieces and formats tests/checkpoint/.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bigseer import checkpoint as ckpt
from bigseer.checkpoint import Piece
from bigseer.errors import CheckpointError

REPO = Path(__file__).resolve().parents[1]


def _pieces(value: torch.Tensor, other: torch.Tensor | None = None) -> list[Piece]:
    out = [Piece.whole("model.w", value)]
    if other is not None:
        out.append(Piece.whole("optim.w.momentum_buffer", other))
    return out


def test_roundtrip_pointer_rng_and_pruning(tmp_path: Path) -> None:
    value = torch.arange(6.0).reshape(2, 3)
    for step in (10, 20, 30):
        value.fill_(float(step))
        torch.manual_seed(step)
        path = ckpt.save_checkpoint(tmp_path, step, _pieces(value), {"step": step}, {"model": "m"}, keep_last=2)
        expected_next = torch.rand(3)
    assert path.name == "step_00000030"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000030"
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_00000020", "step_00000030"]
    meta = ckpt.read_meta(path)
    assert meta["format"] == "elastic" and meta["step"] == 30 and meta["world_size"] == 1

    torch.manual_seed(12345)  # scramble, then restore from the checkpoint
    fresh = torch.zeros(2, 3)
    found = ckpt.find_latest(tmp_path)
    assert found == path
    trainer, meta, missing = ckpt.load_checkpoint(found, _pieces(fresh, torch.zeros(2, 3)))
    assert trainer == {"step": 30} and missing == ["optim.w.momentum_buffer"]  # optional state: kept as is
    assert torch.equal(fresh, torch.full((2, 3), 30.0))
    # RNG restored to its state at save time: the first draw equals the draw made right after saving
    assert torch.equal(torch.rand(3), expected_next)


def test_errors_name_what_is_wrong(tmp_path: Path) -> None:
    path = ckpt.save_checkpoint(tmp_path, 1, _pieces(torch.zeros(4)), {"step": 1}, {"model": "m"}, keep_last=1)
    with pytest.raises(CheckpointError, match="no meta.json"):
        ckpt.read_meta(tmp_path)
    with pytest.raises(CheckpointError, match=r"model.w is \[4\] in the checkpoint but \[5\] in this run"):
        ckpt.load_checkpoint(path, _pieces(torch.zeros(5)))
    with pytest.raises(CheckpointError, match="has no tensor 'model.v'"):
        ckpt.load_checkpoint(path, [Piece.whole("model.v", torch.zeros(4))])
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps(dict(meta, format="dcp")))
    with pytest.raises(CheckpointError, match="bigseer 0.1 checkpoint.*`bigseer export` still reads"):
        ckpt.load_checkpoint(path, _pieces(torch.zeros(4)))
    (path / "meta.json").write_text("{truncated")
    with pytest.raises(CheckpointError, match="corrupt"):
        ckpt.read_meta(path)
    (tmp_path / "checkpoints" / "latest").write_text("step_99999999\n")
    with pytest.raises(CheckpointError, match="step_99999999"):
        ckpt.find_latest(tmp_path)


_SLOW_WRITER = textwrap.dedent("""
    import sys, time, torch
    import bigseer.checkpoint.store as store
    from bigseer.checkpoint import CheckpointWriter, Piece

    real = store.write_staged
    def slow(directory, staged, **kw):  # the state write of step 2 hangs half-way
        real(directory, staged, **kw)
        print("writing", flush=True)
        time.sleep(60)
    writer = CheckpointWriter(sys.argv[1], keep_last=2, async_save=sys.argv[2] == "async")
    writer.save(1, [Piece.whole("model.w", torch.ones(3))], {"step": 1}, {"model": "m"})
    writer.wait()
    store.write_staged = slow
    writer.save(2, [Piece.whole("model.w", torch.full((3,), 2.0))], {"step": 2}, {"model": "m"})
    print("training goes on", flush=True)  # only reached at once when the save runs in the background
    time.sleep(60)
""")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_kill_9_during_a_save_keeps_the_previous_checkpoint(tmp_path: Path, mode: str) -> None:
    script = tmp_path / "slow.py"
    script.write_text(_SLOW_WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), mode], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout is not None
    lines = {proc.stdout.readline().strip(), proc.stdout.readline().strip()} if mode == "async" else \
        {proc.stdout.readline().strip()}
    assert "writing" in lines and (mode == "sync" or "training goes on" in lines)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list((tmp_path / "checkpoints").glob(".tmp-*")), "the kill should have left an uncommitted temp dir"
    latest = ckpt.find_latest(tmp_path)
    assert latest is not None and latest.name == "step_00000001"
    restored = torch.zeros(3)
    assert ckpt.load_checkpoint(latest, [Piece.whole("model.w", restored)])[0] == {"step": 1}
    assert torch.equal(restored, torch.ones(3))
    ckpt.save_checkpoint(tmp_path, 3, [Piece.whole("model.w", restored)], {"step": 3}, {"model": "m"})
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # the next save cleans the stale temp dir


def test_async_save_returns_while_the_write_runs_and_the_next_save_waits(tmp_path: Path, monkeypatch) -> None:
    """Event ordering, no clock: the file write runs on another thread than ``save``'s caller and is held on
    an Event that only the test sets, so ``save(1)`` returned while its write had started and could not
    have finished; ``save(2)`` goes through the writer's ``wait`` (which the test makes set the Event) and
    returns only after write 1 finished; the staged copy, not the live tensor, is what gets written."""
    import threading

    import bigseer.checkpoint.store as store

    real = store.write_staged
    started, release, done = threading.Event(), threading.Event(), []

    def held(directory, staged, **kw):
        assert threading.current_thread() is not threading.main_thread(), "save() wrote on the caller's thread"
        started.set()
        release.wait()
        real(directory, staged, **kw)
        done.append(Path(directory).name)

    monkeypatch.setattr(store, "write_staged", held)
    w = torch.ones(1000)
    writer = ckpt.CheckpointWriter(tmp_path, keep_last=3, async_save=True)
    try:
        writer.save(1, [Piece.whole("model.w", w)], {"step": 1}, {"model": "m"})
        assert started.wait(timeout=300) and not done  # save 1 returned; its write runs in the background, held
        real_wait = writer.wait

        def wait_releasing() -> None:  # write 1 is released only when save 2 waits for it
            release.set()
            real_wait()

        monkeypatch.setattr(writer, "wait", wait_releasing)
        w.fill_(7.0)  # training changes the weights while the save runs: the staged copy is what gets written
        writer.save(2, [Piece.whole("model.w", w)], {"step": 2}, {"model": "m"})
        assert done[:1] == [".tmp-step_00000001"]  # save 2 returned only after write 1 finished
    finally:
        release.set()  # never leave the pool thread held (a failed check above would hang the exit)
        writer.close()
    assert done == [".tmp-step_00000001", ".tmp-step_00000002"]
    one, two = torch.zeros(1000), torch.zeros(1000)
    ckpt.load_checkpoint(tmp_path / "checkpoints" / "step_00000001", [Piece.whole("model.w", one)])
    ckpt.load_checkpoint(tmp_path / "checkpoints" / "step_00000002", [Piece.whole("model.w", two)])
    assert torch.equal(one, torch.ones(1000)) and torch.equal(two, torch.full((1000,), 7.0))
    assert ckpt.find_latest(tmp_path).name == "step_00000002"


def test_saving_a_committed_step_again_keeps_the_committed_one(tmp_path: Path) -> None:
    path = ckpt.save_checkpoint(tmp_path, 5, _pieces(torch.ones(2)), {"step": 5}, {"model": "m"})
    again = ckpt.save_checkpoint(tmp_path, 5, _pieces(torch.zeros(2)), {"step": 5}, {"model": "m"})
    assert again == path and not list((tmp_path / "checkpoints").glob(".tmp-*"))
    restored = torch.full((2,), 7.0)
    ckpt.load_checkpoint(path, _pieces(restored))
    assert torch.equal(restored, torch.ones(2))


def test_truncated_state_is_one_clear_error(tmp_path: Path) -> None:
    path = ckpt.save_checkpoint(tmp_path, 1, _pieces(torch.ones(8)), {"step": 1}, {"model": "m"})
    data = next(p for p in (path / "state").iterdir() if p.suffix == ".distcp")
    data.write_bytes(data.read_bytes()[:20])
    with pytest.raises(CheckpointError, match=r"cannot read the checkpoint state .*corrupt or incomplete"):
        ckpt.load_checkpoint(path, _pieces(torch.zeros(8)))
    assert data.exists()  # nothing deleted
