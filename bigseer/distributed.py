"""Small explicit collectives that also work with one process (no process group initialised).

Every function takes an optional ``group``; with world size 1 it returns its input unchanged, so
single-process code paths are the same code as the distributed ones.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

Group = dist.ProcessGroup | None


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_world_size(group: Group = None) -> int:
    """World size of ``group`` (1 without a process group)."""
    return dist.get_world_size(group) if is_distributed() else 1


def get_rank(group: Group = None) -> int:
    """Rank within ``group`` (0 without a process group)."""
    return dist.get_rank(group) if is_distributed() else 0


def all_reduce_sum(t: torch.Tensor, group: Group = None) -> torch.Tensor:
    """Sum over ranks (returns a new tensor; no autograd)."""
    if get_world_size(group) == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def all_reduce_max(t: torch.Tensor, group: Group = None) -> torch.Tensor:
    """Element-wise max over ranks (returns a new tensor; no autograd)."""
    if get_world_size(group) == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX, group=group)
    return out


def all_reduce_mean(t: torch.Tensor, group: Group = None) -> torch.Tensor:
    """Mean over ranks (returns a new tensor; no autograd)."""
    ws = get_world_size(group)
    return t if ws == 1 else all_reduce_sum(t, group) / ws


def all_gather_cat(t: torch.Tensor, group: Group = None, dim: int = 0) -> torch.Tensor:
    """Concatenate equally shaped tensors from all ranks along ``dim`` (rank order; no autograd)."""
    ws = get_world_size(group)
    if ws == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(ws)]
    dist.all_gather(parts, t.detach().contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (for a process group this process starts)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def init_distributed(backend: str | None = None, timeout_s: int = 1800) -> bool:
    """Initialise the default process group from launcher env vars (torchrun / deepspeed).

    Returns False (and does nothing) when ``WORLD_SIZE`` is unset or 1 and no group exists.
    ``backend`` defaults to nccl when CUDA is available, else gloo.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = timedelta(seconds=timeout_s)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and "MASTER_ADDR" in os.environ:
        # torchrun's agent keeps one key-value store across restarts of the workers; process groups created
        # after the default one (FSDP's mesh, the checkpoint group) have the same names in every attempt and
        # would read the dead attempt's addresses (gloo: "connectFullMesh failed ... Connection refused").
        # A prefix per restart attempt keeps every attempt's keys apart.
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                              int(os.environ["WORLD_SIZE"]), is_master=False, timeout=timeout)
        store = dist.PrefixStore(f"bigseer/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)
        dist.init_process_group(backend=backend, store=store, rank=int(os.environ["RANK"]),
                                world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout)
    else:
        dist.init_process_group(backend=backend, timeout=timeout)
    return True
