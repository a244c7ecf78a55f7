"""What a run starts in its process ends with it: DeepSpeed in one process (no launcher) makes a process
group of one, sets the launcher variables and DeepSpeed's communication backend; ``Parallel.close`` (called
by the engine when a run ends) undoes all of it, so the next run in the same process starts from scratch
instead of silently running the distributed code path at world size 1 (and two concurrent test runs never
share a fixed MASTER_PORT)."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest
import torch.distributed as dist

from bigseer.config import PretrainConfig
from bigseer.engine import pretrain

LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
TINY = dict(model="regnety_test", crops="2x32+2x16", head_dims=(32,), embed_dim=16, num_prototypes=32,
            max_steps=1, export=False, recipe="none")


@pytest.fixture
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    assert not dist.is_initialized()


def _shm() -> set[str]:
    return set(glob.glob("/dev/shm/deepspeed_*"))


def _of_ports(segments: set[str], ports: list[int]) -> list[str]:
    """The DeepSpeed CPU all-reduce segments of these master ports (a name holds uid, address and port: other
    jobs on the machine, e.g. the other pytest worker, have other ports)."""
    return sorted(p for p in segments if any(f"_{port}_" in Path(p).name for port in ports))


def test_a_deepspeed_run_in_one_process_leaves_nothing_behind(no_launcher: None, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import deepspeed.comm.comm as ds_state

    import bigseer.distributed

    ports: list[int] = []  # the free ports the runs' one-process groups take

    def recording_free_port(real=bigseer.distributed.free_port) -> int:
        ports.append(real())
        return ports[-1]

    monkeypatch.setattr(bigseer.distributed, "free_port", recording_free_port)
    before = _shm()
    losses = []
    for i in range(2):  # the second in-process init after the first works and computes the same
        result = pretrain(PretrainConfig(**TINY, ds_config="zero2_fp32", output_dir=str(tmp_path / f"run{i}")))
        losses.append(result.losses)
        assert not dist.is_initialized(), "the run left its process group behind"
        assert ds_state.cdb is None, "the run left DeepSpeed's communication backend behind"
        assert [n for n in LAUNCHER_VARS if n in os.environ] == [], "the run left launcher variables set"
    assert losses[0] == losses[1]
    assert len(ports) == 2 and ports[0] != ports[1], ports
    assert _of_ports(_shm() - before, ports) == []


def test_a_ddp_run_in_one_process_makes_no_group(no_launcher: None, tmp_path: Path) -> None:
    pretrain(PretrainConfig(**TINY, batch_size=4, output_dir=str(tmp_path / "run")))
    assert not dist.is_initialized()


def _hang_on_rank_1(rank: int, world: int) -> int:
    import time

    if rank == 1:
        time.sleep(3600)
    return rank


def test_a_hung_rank_is_a_failure_and_is_killed() -> None:
    """tests.distributed_utils.run_distributed ends a hang with TimeoutError after its limit, ranks killed."""
    import multiprocessing

    from tests.distributed_utils import run_distributed

    with pytest.raises(TimeoutError, match="still running after 5 s"):
        run_distributed(_hang_on_rank_1, 2, timeout_s=5)
    assert multiprocessing.active_children() == []
