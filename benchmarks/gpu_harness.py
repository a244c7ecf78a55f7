"""The benchmark harness of benchmarks/gpu_check.py: rows with a status, a time limit per row inside one
budget, SIGTERM as a stop that still writes the report, and the 1-rank process group the steps run in."""

from __future__ import annotations

import contextlib
import gc
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    """One table row: name, status (``ok``, ``FAIL: ...`` or ``skipped: ...``), details, numbers, seconds."""

    name: str
    status: str = "ok"
    details: str = ""
    seconds: float = 0.0
    numbers: dict[str, Any] = field(default_factory=dict)


class Skip(Exception):
    """A row that cannot run here: reported as ``skipped: <reason>``."""


class CheckTimeout(Exception):
    """A row ran past its time limit."""


class Terminated(BaseException):
    """SIGTERM (the shell's ``timeout``): stop, but write the report first."""


def raise_terminated(signum: int, frame: Any) -> None:
    """SIGTERM handler: unwind to the driver, which writes the report."""
    raise Terminated()


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``CheckTimeout`` in the main thread after ``seconds`` (SIGALRM; interrupts Python code only)."""
    def on_alarm(signum: int, frame: Any) -> None:
        raise CheckTimeout(f"time limit {seconds:.0f}s reached")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_check(name: str, fn: Callable[[], Row], limit_s: float) -> Row:
    """Run one row under a time limit; any exception becomes a FAIL row, ``Skip`` a skipped one."""
    t0 = time.perf_counter()
    print(f"--- {name} (limit {limit_s:.0f}s)", flush=True)
    try:
        with time_limit(limit_s):
            row = fn()
    except Skip as exc:
        row = Row(name, status=f"skipped: {exc}")
    except (KeyboardInterrupt, SystemExit, Terminated):
        raise
    except BaseException as exc:  # noqa: BLE001 - one failing row must not hide the others
        traceback.print_exc()
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())
        row = Row(name, status=f"FAIL: {msg[:300]}")
    row.name = name
    row.seconds = time.perf_counter() - t0
    print(f"ROW | {row.name} | {row.status} | {row.details} | {row.seconds:.1f} |", flush=True)
    return row


def wanted_check(name: str, wanted: list[str] | None) -> bool:
    """``--only`` items select a row by its name or by a leading part of it (``throughput``, ``profile``)."""
    return not wanted or any(name == w or name.startswith(w + " ") for w in wanted)


def init_one_rank(device: str) -> None:
    """A 1-rank default process group in this process (nccl on CUDA, gloo on CPU), on an in-memory store.

    ``bigseer.distributed.init_distributed`` leaves world size 1 without a group; the steps measured here
    take the distributed code paths (FSDP2's collectives) as a real run does."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if device == "cuda":
        torch.cuda.set_device(0)
        dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1,
                                device_id=torch.device("cuda", 0))
    else:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def free_memory(device: str) -> None:
    """Collect garbage and give cached CUDA blocks back."""
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
