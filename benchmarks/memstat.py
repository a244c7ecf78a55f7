"""Process-memory readings shared by the benchmarks (Linux ``/proc``) and the glibc setting they use."""

from __future__ import annotations

import argparse
import os


def status_kib(field: str) -> int:
    """A field of ``/proc/self/status`` in KiB: ``VmRSS`` (resident now) or ``VmHWM`` (peak resident)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no field {field!r}")


def add_mmap_threshold_arg(ap: argparse.ArgumentParser) -> None:
    """``--mmap-threshold``: glibc's MALLOC_MMAP_THRESHOLD_ for the measured (spawned) processes."""
    ap.add_argument("--mmap-threshold", type=int, default=65536,
                    help="MALLOC_MMAP_THRESHOLD_ for the measured processes (glibc then returns every freed block "
                         "above it to the OS at once, so RSS follows the live tensors; 0 = leave glibc's default)")


def apply_mmap_threshold(value: int) -> None:
    """Set it in the environment; glibc reads it at process start, so it applies to processes spawned after."""
    if value:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(value)
