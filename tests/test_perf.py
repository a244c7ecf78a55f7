"""Fast training steps and MFU: channels_last and torch.compile change only rounding (within this computation's
fp32 error, derived from a float64 run: tests/numerics.py), and the logged MFU is the counted FLOPs of a
step over its time and the measured peak, checked exactly with an injected clock and peak (no timing of this
machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bigseer import parallel
from bigseer.config import PretrainConfig
from bigseer.engine import build_swav_model, pretrain
from bigseer.optim import LARS
from tests.numerics import assert_within_fp32_error

pytestmark = pytest.mark.numerics

CFG = dict(model="regnety_test", head_dims=(32,), embed_dim=16, num_prototypes=32, crops="2x32+2x16", seed=2)


def _crops(dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.randn(2, 8, 3, 32, 32, generator=g).to(dtype), torch.randn(2, 8, 3, 16, 16, generator=g).to(dtype)]


def _loss_and_grad(dtype: torch.dtype = torch.float32, **speedups) -> tuple[torch.Tensor, torch.Tensor]:
    model = build_swav_model(PretrainConfig(**CFG)).to(dtype)
    par = parallel.setup(model, backend="ddp", optimizer_factory=lambda g: LARS(g, lr=0.1), **speedups)
    loss = par.forward(_crops(dtype))
    par.backward(loss)
    return loss.detach(), model.trunk.s2.b1.conv2.conv.weight.grad.detach().clone()


@pytest.mark.parametrize("speedups", [dict(channels_last=True), dict(channels_last=True, compile=True)])
def test_speedups_change_only_rounding(speedups) -> None:
    eager = _loss_and_grad()
    exact = _loss_and_grad(torch.float64)
    fast = _loss_and_grad(**speedups)
    assert_within_fp32_error(fast[0], eager[0], exact[0], f"loss {speedups}")
    assert_within_fp32_error(fast[1], eager[1], exact[1], f"grad {speedups}")


def test_channels_last_reaches_the_convs() -> None:
    model = build_swav_model(PretrainConfig(**CFG))
    parallel.setup(model, backend="ddp", optimizer_factory=lambda g: LARS(g, lr=0.1), channels_last=True)
    w = model.trunk.s1.b1.conv2.conv.weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    assert model.state_dict().keys() == build_swav_model(PretrainConfig(**CFG)).state_dict().keys()


class _Clock:
    """Stands in for the ``time`` module: ``perf_counter`` advances exactly ``tick`` seconds per call."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now

    def __getattr__(self, name: str):
        import time

        return getattr(time, name)


def test_measured_peak_is_2n3_flops_over_the_best_matmul_time(monkeypatch) -> None:
    """The peak arithmetic with an injected clock: every timed matmul takes exactly 1/8 s."""
    import bigseer.perf as perf

    monkeypatch.setattr(perf, "_PEAKS", {})
    monkeypatch.setattr(perf, "time", _Clock(0.125))
    assert perf.measured_peak_flops("cpu", torch.float32, n=64, repeats=2) == 2 * 64 ** 3 / 0.125
    monkeypatch.setattr(perf, "time", _Clock(1.0))  # cached per (device, dtype, threads): not re-measured
    assert perf.measured_peak_flops("cpu", torch.float32, n=64) == 2 * 64 ** 3 / 0.125


def test_mfu_in_the_log_is_counted_flops_over_step_time(tmp_path: Path, monkeypatch) -> None:
    """Injected peak (2^30 FLOP/s) and step clock (every logged step takes exactly 1/4 s): the logged FLOPs are
    FlopCounterMode's count of a real step, and img/s, TFLOP/s and MFU their exact quotients (powers of two:
    no rounding but the one of TFLOP/s)."""
    from torch.utils.flop_counter import FlopCounterMode

    import bigseer.engine as engine
    import bigseer.perf as perf
    from bigseer.data import MultiCropStream

    peak, dt = float(2 ** 30), 0.25
    monkeypatch.setattr(perf, "measured_peak_flops", lambda *a, **k: peak)
    monkeypatch.setattr(engine, "time", _Clock(dt))  # the engine reads the clock at a step's start and its log
    cfg = PretrainConfig(**CFG, batch_size=8, max_steps=3, output_dir=str(tmp_path), export=False)
    pretrain(cfg)
    recs = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    model = build_swav_model(PretrainConfig(**CFG))
    batch = next(iter(MultiCropStream("builtin", CFG["crops"], 8, seed=2)))
    counter = FlopCounterMode(display=False)
    with counter:
        model(batch.crops).backward()
    flops = counter.get_total_flops()
    assert flops > 0 and len(recs) == 3
    for r in recs:
        assert r["flops_per_step"] == flops
        assert r["img_per_s"] == 8 / dt == 32.0
        assert r["tflops"] == flops / dt / 1e12
        assert r["mfu"] == flops * 4 / 2 ** 30
