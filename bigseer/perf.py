"""FLOPs per training step and model FLOPs utilisation (MFU) for the log.

The FLOPs of one step (forward + backward over the multi-crop resolution mix, this rank's batch) are
counted once with ``torch.utils.flop_counter.FlopCounterMode`` on a real step and cached; achieved
FLOP/s = FLOPs / step time, MFU = achieved / peak. The peak is *measured* on this device in the run's
compute dtype: the best of a few large matmuls (``2 n^3`` FLOPs each) on CPU (with this process's
threads) or GPU, so MFU says how close the step comes to what this machine's matmul unit delivers.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch

_PEAKS: dict[tuple[str, str, int], float] = {}


def measured_peak_flops(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, n: int | None = None,
                        repeats: int = 3) -> float:
    """FLOP/s of the best of ``repeats`` ``n x n`` matmuls on ``device`` in ``dtype`` (cached per device/dtype)."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    key = (str(device), str(dtype), torch.get_num_threads())
    if key in _PEAKS:
        return _PEAKS[key]
    gen = torch.Generator(device=device).manual_seed(0)  # never the global generator a resume restored
    a = torch.randn(n, n, device=device, generator=gen).to(dtype)
    b = torch.randn(n, n, device=device, generator=gen).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    _PEAKS[key] = 2 * n ** 3 / best
    return _PEAKS[key]


class FlopMeter:
    """Counts one step's FLOPs (``count()`` around that step), then turns step times into FLOP/s and MFU."""

    def __init__(self, peak_flops: float) -> None:
        self.peak = float(peak_flops)
        self.step_flops: float | None = None

    @contextmanager
    def count(self) -> Iterator[None]:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            yield
        self.step_flops = float(counter.get_total_flops())

    def metrics(self, step_time_s: float) -> dict[str, Any]:
        """``flops_per_step``, ``tflops`` (achieved, this rank) and ``mfu`` (fraction of the measured peak)."""
        if self.step_flops is None or step_time_s <= 0:
            return {}
        achieved = self.step_flops / step_time_s
        return {"flops_per_step": self.step_flops, "tflops": achieved / 1e12, "mfu": achieved / self.peak}
