"""Warmup + half-cosine (SEER numbers) and the fixed-LR halve-on-plateau schedule."""

import math

import pytest

from bigseer.errors import ConfigError
from bigseer.optim import PlateauHalving, WarmupCosine, seer_peak_lr, seer_warmup_cosine


def test_seer_warmup_cosine_numbers():
    s = seer_warmup_cosine(8192, total_steps=100_000, warmup_steps=8000)
    assert seer_peak_lr(8192) == pytest.approx(9.6)
    assert s(0) == pytest.approx(0.15)
    assert s(4000) == pytest.approx(0.15 + (9.6 - 0.15) / 2)
    assert s(8000) == pytest.approx(9.6)
    mid = 8000 + (100_000 - 8000) // 2
    assert s(mid) == pytest.approx((9.6 + 0.0096) / 2)
    assert s(100_000) == pytest.approx(0.0096) and s(200_000) == pytest.approx(0.0096)
    lrs = [s(t) for t in range(8000, 100_001, 1000)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone decay after warmup


def test_warmup_cosine_validation():
    with pytest.raises(ConfigError, match="warmup_steps"):
        WarmupCosine(0.1, 1.0, 10, 5, 0.0)
    assert WarmupCosine(0.1, 1.0, 0, 10, 0.0)(0) == pytest.approx(1.0)


def test_plateau_halving():
    s = PlateauHalving(lr=1.0, patience=3, threshold=0.0)
    for loss in (5.0, 4.0, 3.0):
        assert s.update(loss) == 1.0
    assert s.update(3.0) == 1.0 and s.update(3.5) == 1.0
    assert s.update(3.1) == 0.5  # third check without improvement
    assert s.halvings == 1
    state = s.state_dict()
    t = PlateauHalving(lr=9.0)
    t.load_state_dict(state)
    assert t.lr == 0.5 and t.best == 3.0
    assert s.update(math.nan) == 0.5
    with pytest.raises(ConfigError):
        PlateauHalving(lr=1.0, factor=1.5)
