"""Run a function on N gloo ranks in spawned processes and collect each rank's return value.

Usage in a test::

    from tests.distributed_utils import run_distributed
    results = run_distributed(my_fn, world_size=2, args=(x,))   # my_fn(rank, world_size, *args)

``my_fn`` must be a module-level function (it is pickled by reference). Each rank has the default
process group initialised (gloo, file store) before ``my_fn`` runs; its return value (anything
``torch.save`` can store) comes back in rank order. An exception on any rank fails the call.

Every call gets its own free ``MASTER_PORT``: DeepSpeed's CPU all-reduce names its shared-memory segments
after MASTER_ADDR/MASTER_PORT, so jobs on the default port (29500) share them (the suspected cause of a
rare rank abort, "terminate called without an active exception", seen in full-suite runs). The
segments of the call are removed afterwards.
"""

from __future__ import annotations

import glob
import os
import sys
import tempfile
import time
from datetime import timedelta
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bigseer.distributed import free_port  # noqa: F401 (tests import it from here too)


def _worker(rank: int, fn: Callable[..., Any], world_size: int, init_file: str, out_dir: str,
            args: Sequence[Any], env: dict[str, str]) -> None:
    os.environ.update(env)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size)})
    torch.set_num_threads(int(os.environ.get("BIGSEER_TEST_THREADS", "1")))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        _teardown()


def _teardown() -> None:
    """End every process group of this rank before the interpreter's finalisation: DeepSpeed's communication
    backend (which keeps references to its groups) when the rank used DeepSpeed, else torch's groups."""
    ds_state = sys.modules.get("deepspeed.comm.comm")
    if ds_state is not None and getattr(ds_state, "cdb", None) is not None and dist.is_initialized():
        import deepspeed.comm as ds_comm

        ds_comm.destroy_process_group()
        ds_state.cdb = None
    elif dist.is_initialized():
        dist.destroy_process_group()


def _join(ctx: Any, timeout_s: float) -> None:
    """Wait for every rank; past ``timeout_s`` kill them all and fail (a hang becomes a failure, not a CI
    time-out). A rank's exception is re-raised by ``ctx.join`` as ProcessRaisedException."""
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            for p in ctx.processes:
                p.join(5)
            raise TimeoutError(f"run_distributed: ranks still running after {timeout_s:.0f} s; killed")


def run_distributed(fn: Callable[..., Any], world_size: int, args: Sequence[Any] = (),
                    env: dict[str, str] | None = None, timeout_s: float = 300) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks; return per-rank results. The ranks
    are killed and the call fails after ``timeout_s`` seconds."""
    port = str(free_port())
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, **(env or {})}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            init_file = os.path.join(tmp, "store")
            ctx = mp.start_processes(_worker, args=(fn, world_size, init_file, tmp, tuple(args), env),
                                     nprocs=world_size, join=False, start_method="spawn")
            _join(ctx, timeout_s)
            return [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]
    finally:
        for seg in glob.glob(f"/dev/shm/deepspeed_*_{env['MASTER_ADDR']}_{env['MASTER_PORT']}_*"):
            try:
                os.unlink(seg)
            except OSError:
                pass
