"""Atomic checkpoint commit, pointer, pruning, RNG restore, crash safety and clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from bigseer import checkpoint as ckpt
from bigseer.errors import CheckpointError


class FakeBackend:
    """Stands in for a parallel backend: one tensor of 'model state'."""

    checkpoint_format = "torch"

    def __init__(self, value: torch.Tensor) -> None:
        self.value = value

    def save(self, directory: str) -> None:
        torch.save({"v": self.value}, os.path.join(directory, "state.pt"))

    def load(self, directory: str) -> None:
        self.value = torch.load(os.path.join(directory, "state.pt"), weights_only=True)["v"]


def test_roundtrip_pointer_rng_and_pruning(tmp_path: Path) -> None:
    backend = FakeBackend(torch.arange(4.0))
    for step in (10, 20, 30):
        backend.value = torch.full((4,), float(step))
        torch.manual_seed(step)
        path = ckpt.save_checkpoint(tmp_path, step, backend, {"step": step}, {"model_name": "m"}, keep_last=2)
        expected_next = torch.rand(3)
    assert path.name == "step_00000030"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000030"
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_00000020", "step_00000030"]
    meta = ckpt.read_meta(path)
    assert meta["format"] == "torch" and meta["step"] == 30 and meta["world_size"] == 1

    torch.manual_seed(12345)  # scramble, then restore from the checkpoint
    fresh = FakeBackend(torch.zeros(4))
    found = ckpt.find_latest(tmp_path)
    assert found == path
    trainer = ckpt.load_checkpoint(found, fresh)
    assert trainer == {"step": 30}
    assert torch.equal(fresh.value, torch.full((4,), 30.0))
    # RNG restored to its state at save time: the first draw equals the draw made right after saving
    assert torch.equal(torch.rand(3), expected_next)


def test_errors_name_what_is_wrong(tmp_path: Path) -> None:
    backend = FakeBackend(torch.zeros(1))
    path = ckpt.save_checkpoint(tmp_path, 1, backend, {"step": 1}, {}, keep_last=1)
    with pytest.raises(CheckpointError, match="no meta.json"):
        ckpt.read_meta(tmp_path)
    other = FakeBackend(torch.zeros(1))
    other.checkpoint_format = "dcp"
    with pytest.raises(CheckpointError, match="format 'torch'"):
        ckpt.load_checkpoint(path, other)
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps(dict(meta, world_size=4)))
    with pytest.raises(CheckpointError, match="written by 4 ranks"):
        ckpt.load_checkpoint(path, backend)
    (path / "meta.json").write_text("{truncated")
    with pytest.raises(CheckpointError, match="corrupt"):
        ckpt.read_meta(path)
    (tmp_path / "checkpoints" / "latest").write_text("step_99999999\n")
    with pytest.raises(CheckpointError, match="step_99999999"):
        ckpt.find_latest(tmp_path)


_SLOW_WRITER = textwrap.dedent("""
    import os, sys, time, torch
    from bigseer import checkpoint as ckpt

    class Slow:
        checkpoint_format = "torch"
        def save(self, d):
            with open(os.path.join(d, "state.pt"), "wb") as f:
                for _ in range(400):
                    f.write(b"x" * 65536)
                    f.flush()
                    time.sleep(0.01)
        def load(self, d):
            pass

    print("writing", flush=True)
    ckpt.save_checkpoint(sys.argv[1], 2, Slow(), {"step": 2}, {}, keep_last=2)
    print("done", flush=True)
""")


def test_kill_9_during_write_keeps_previous_checkpoint(tmp_path: Path) -> None:
    good = FakeBackend(torch.ones(2))
    ckpt.save_checkpoint(tmp_path, 1, good, {"step": 1}, {}, keep_last=2)
    script = tmp_path / "slow.py"
    script.write_text(_SLOW_WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    deadline = time.time() + 30
    while not list((tmp_path / "checkpoints").glob(".tmp-*/state.pt")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list((tmp_path / "checkpoints").glob(".tmp-*")), "the kill should have left an uncommitted temp dir"
    latest = ckpt.find_latest(tmp_path)
    assert latest is not None and latest.name == "step_00000001"
    restored = FakeBackend(torch.zeros(2))
    assert ckpt.load_checkpoint(latest, restored) == {"step": 1}
    assert torch.equal(restored.value, torch.ones(2))
    # the next save cleans the stale temp dir
    ckpt.save_checkpoint(tmp_path, 3, good, {"step": 3}, {}, keep_last=2)
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_saving_a_committed_step_again_keeps_the_committed_one(tmp_path: Path) -> None:
    first = FakeBackend(torch.ones(2))
    path = ckpt.save_checkpoint(tmp_path, 5, first, {"step": 5}, {}, keep_last=2)
    again = ckpt.save_checkpoint(tmp_path, 5, FakeBackend(torch.zeros(2)), {"step": 5}, {}, keep_last=2)
    assert again == path and not list((tmp_path / "checkpoints").glob(".tmp-*"))
    restored = FakeBackend(torch.full((2,), 7.0))
    ckpt.load_checkpoint(path, restored)
    assert torch.equal(restored.value, torch.ones(2))


def test_truncated_backend_state_is_one_clear_error(tmp_path: Path) -> None:
    path = ckpt.save_checkpoint(tmp_path, 1, FakeBackend(torch.ones(8)), {"step": 1}, {}, keep_last=1)
    state = path / "state.pt"
    state.write_bytes(state.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"cannot restore the 'torch' state .*corrupt or incomplete"):
        ckpt.load_checkpoint(path, FakeBackend(torch.zeros(8)))
    assert state.exists()  # nothing deleted
