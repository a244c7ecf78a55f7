"""Fast training steps and MFU: channels_last and torch.compile change only rounding (within this computation's
fp32 error, derived from a float64 run: tests/numerics.py), and the logged MFU is the counted FLOPs of a
step over its time and the measured peak."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bigseer import parallel
from bigseer.config import PretrainConfig
from bigseer.engine import build_swav_model, pretrain
from bigseer.optim import LARS
from bigseer.perf import measured_peak_flops
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


def test_mfu_in_the_log_is_counted_flops_over_step_time(tmp_path: Path, caplog) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    cfg = PretrainConfig(**CFG, batch_size=8, max_steps=3, output_dir=str(tmp_path), export=False)
    pretrain(cfg)
    recs = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    model = build_swav_model(PretrainConfig(**CFG))
    from bigseer.data import MultiCropStream

    stream = MultiCropStream("builtin", CFG["crops"], 8, seed=2)
    batch = next(iter(stream))
    counter = FlopCounterMode(display=False)
    with counter:
        model(batch.crops).backward()
    peak = measured_peak_flops("cpu", torch.float32)
    for r in recs:
        assert r["flops_per_step"] == counter.get_total_flops() > 0
        step_time = 8 / r["img_per_s"]
        assert r["tflops"] == pytest.approx(r["flops_per_step"] / step_time / 1e12, rel=1e-9)
        assert r["mfu"] == pytest.approx(r["tflops"] * 1e12 / peak, rel=1e-9) and 0 < r["mfu"] < 1.5
