"""Collapse detector: fires once on a sustained trivial fixed point (stats sequences and real SwAV head
training), stays quiet on healthy training and on plateaus shorter than the patience, names this run's likely
causes, and stops with CollapseError on request."""

from __future__ import annotations

import math

import pytest
import torch

from bigseer.config import PretrainConfig
from bigseer.errors import BigseerError, ConfigError
from bigseer.health import CollapseDetector, CollapseError, likely_causes
from bigseer.ssl import SwAVHead

pytestmark = pytest.mark.numerics

K = 64
SEER_AT_32 = PretrainConfig(crops="2x32+4x16").to_dict()  # SEER-strength augmentation, zero-init, 32 px


def _stats(loss_ratio: float, code_ratio: float, used: int, spread: float) -> dict[str, float]:
    log_k = math.log(K)
    return {"loss": loss_ratio * log_k, "loss_ratio": loss_ratio, "code_entropy": code_ratio * log_k,
            "prototypes_used": used, "embed_std_ratio": spread, "num_prototypes": K}


HEALTHY = _stats(0.7, 0.6, 40, 0.8)
TRIVIAL = _stats(1.0001, 0.999, 30, 0.05)


def _feed(det: CollapseDetector, seq: list[dict[str, float]]) -> list[tuple[int, str]]:
    return [(step, line) for step, s in enumerate(seq, 1) if (line := det.update(step, s))]


def test_fires_once_after_patience_and_names_causes():
    det = CollapseDetector.for_config(SEER_AT_32, median_side=32, patience=50)
    fired = _feed(det, [HEALTHY] * 30 + [TRIVIAL] * 200)
    assert [s for s, _ in fired] == [30 + 50]  # one line, at the 50th trivial step
    line = fired[0][1]
    assert "\n" not in line and "steps 31-80" in line and "1.000 x ln K" in line
    assert "augmentation too strong for 32 px images" in line and "--recipe auto" in line
    assert "--no_zero_init_last" in line and "--jitter_strength 0.4" in line
    assert det.last_healthy_step == 30


def test_quiet_on_healthy_and_on_short_plateau():
    det = CollapseDetector(patience=50)
    assert _feed(det, [HEALTHY] * 300) == []
    # a plateau at ln K shorter than the patience, then learning resumes (seen with the auto recipe at 32 px)
    det = CollapseDetector(patience=50)
    assert _feed(det, [HEALTHY] * 10 + [TRIVIAL] * 49 + [HEALTHY] * 5 + [TRIVIAL] * 49 + [HEALTHY] * 100) == []


def test_each_signature_counts():
    det = CollapseDetector(patience=3)
    assert det.is_trivial(TRIVIAL)
    assert det.is_trivial(_stats(1.0, 0.5, 1, 0.5))  # pinned loss, one prototype wins everything
    assert det.is_trivial(_stats(0.8, 0.5, 40, 0.001))  # embeddings collapsed, whatever the loss
    assert not det.is_trivial(_stats(1.0, 0.5, 40, 0.5))  # loss at ln K alone (e.g. crossing it) is not enough
    assert not det.is_trivial(_stats(1.05, 0.999, 30, 0.05))  # above ln K: early training, not the fixed point


def test_stop_raises_collapse_error_with_last_good_step():
    det = CollapseDetector.for_config({**SEER_AT_32, "on_collapse": "stop", "collapse_patience": 20})
    with pytest.raises(CollapseError) as exc:
        _feed(det, [HEALTHY] * 7 + [TRIVIAL] * 30)
    err = exc.value
    assert isinstance(err, BigseerError) and (err.step, err.since_step, err.last_healthy_step) == (27, 8, 7)
    assert "checkpoints up to step 7" in str(err)
    off = CollapseDetector(on_collapse="off", patience=1)
    assert _feed(off, [TRIVIAL] * 10) == []


def test_state_dict_resumes_the_streak():
    a = CollapseDetector(patience=40)
    _feed(a, [HEALTHY] * 5 + [TRIVIAL] * 30)
    b = CollapseDetector(patience=40)
    b.load_state_dict(a.state_dict())
    fired = [s for s in range(36, 60) if b.update(s, TRIVIAL)]
    assert fired == [45]


def test_causes_follow_the_configuration():
    def names(cfg, side=None):
        return " | ".join(c for c, _ in likely_causes({**PretrainConfig().to_dict(), **cfg}, side))

    tuned = dict(crops="2x32@0.7-1", jitter_strength=0.4, grayscale_p=0.0, blur_p=0.0, zero_init_last=False,
                 num_prototypes=64, batch_size=64, base_lr=2.4)
    assert "augmentation too strong" not in names(tuned, 32) and "zero-init" not in names(tuned, 32)
    assert "epsilon=0.01" in names({**tuned, "epsilon": 0.01})
    assert "queue" in names({**tuned, "queue_length": 3840})
    assert "base_lr=0.3 too low" in names({**tuned, "base_lr": 0.3}, 32)
    assert "base_lr=20 is high" in names({**tuned, "base_lr": 20.0}, 32)
    assert "upsample 32 px images" in names({**tuned, "crops": "2x64@0.7-1"}, 32)
    assert "K=256 prototypes for a global batch of 32" in names({**tuned, "num_prototypes": 256, "batch_size": 32})
    assert "no obvious setting" in names(tuned, 32)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="on_collapse"):
        CollapseDetector(on_collapse="panic")
    with pytest.raises(ConfigError, match="collapse_patience"):
        CollapseDetector(patience=0)


def _train_head(feats_fn, steps: int, det: CollapseDetector, lr: float = 0.5) -> list[str]:
    """Real SwAV head training (SGD) on features from ``feats_fn(step)``; the detector reads head.last_stats."""
    torch.manual_seed(0)
    head = SwAVHead(16, [32], 8, K)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9)
    lines = []
    for step in range(1, steps + 1):
        loss = head(feats_fn(step), temperature=0.1, epsilon=0.05, sinkhorn_iters=3)
        opt.zero_grad()
        loss.backward()
        opt.step()
        head.normalize_prototypes()
        line = det.update(step, head.last_stats.as_dict())
        if line:
            lines.append(line)
    return lines


def test_real_head_training_collapse_fires_and_healthy_is_quiet():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(128, 16, generator=g)  # 128 distinct "images"

    def healthy(step: int) -> torch.Tensor:  # two views: the image plus small noise
        n = torch.Generator().manual_seed(step)
        return base + 0.1 * torch.randn(2, 128, 16, generator=n)

    def identical(step: int) -> torch.Tensor:  # every image the same: the views carry no signal
        return base[:1].expand(2, 128, 16).contiguous()

    det = CollapseDetector.for_config({**SEER_AT_32, "collapse_patience": 30})
    assert _train_head(healthy, 120, det) == []
    det = CollapseDetector.for_config({**SEER_AT_32, "collapse_patience": 30})
    lines = _train_head(identical, 120, det)
    assert len(lines) == 1 and "SwAV collapsed" in lines[0]
