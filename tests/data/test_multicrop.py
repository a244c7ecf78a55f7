"""Crop specs, RandomResizedCrop geometry, augmentation output."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bigseer.data.multicrop import (AugmentConfig, CropGroup, format_crops, needed_scale, normalize_uint8,
                                    parse_crops, plan_crops, random_resized_box, render_crop)
from bigseer.errors import ConfigError
from tests.data.zoo import noise_image


def test_parse_defaults_and_explicit_scales():
    assert parse_crops("2x224+4x96") == [CropGroup(2, 224, (0.14, 1.0)), CropGroup(4, 96, (0.05, 0.14))]
    assert parse_crops("2x160+4x96")[0] == CropGroup(2, 160, (0.14, 1.0))
    assert [g.count for g in parse_crops("2x224+6x96")] == [2, 6]
    groups = parse_crops("2x224@0.2-0.9+4x96@0.05-0.1")
    assert groups[0].scale == (0.2, 0.9) and groups[1].scale == (0.05, 0.1)
    assert parse_crops(format_crops(groups)) == groups
    assert parse_crops(groups) == groups


@pytest.mark.parametrize("spec", ["", "2x", "224", "2x224+", "2*224", "0x224", "2x0", "2x224@0.5-0.2",
                                  "2x224@0-1", "2x224@0.1-1.5", "2x224@a-b", "abc"])
def test_bad_spec_names_spec_and_form(spec):
    with pytest.raises(ConfigError) as info:
        parse_crops(spec)
    msg = str(info.value)
    assert repr(spec) in msg and "2x224+4x96" in msg and "\n" not in msg


def test_random_resized_box_statistics():
    rng = np.random.default_rng(0)
    W, H = 400, 300
    fracs, aspects = [], []
    for _ in range(2000):
        x0, y0, x1, y1 = random_resized_box(W, H, (0.14, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
        fracs.append((x1 - x0) * (y1 - y0) / (W * H))
        aspects.append((x1 - x0) / (y1 - y0))
    fracs, aspects = np.array(fracs), np.array(aspects)
    assert fracs.min() >= 0.13 and fracs.max() <= 1.0
    assert 0.4 < np.median(fracs) < 0.7  # not stuck at the fallback (whole image)
    assert aspects.min() > 0.7 and aspects.max() < 1.4
    small = [random_resized_box(W, H, (0.05, 0.14), (3 / 4, 4 / 3), rng) for _ in range(500)]
    f = np.array([(b[2] - b[0]) * (b[3] - b[1]) / (W * H) for b in small])
    assert f.min() >= 0.045 and f.max() <= 0.15


def test_fallback_for_extreme_aspect_and_tiny():
    rng = np.random.default_rng(0)
    assert random_resized_box(1, 1, (0.05, 0.14), (3 / 4, 4 / 3), rng) == (0, 0, 1, 1)
    x0, y0, x1, y1 = random_resized_box(1000, 2, (0.5, 1.0), (3 / 4, 4 / 3), rng)
    assert y1 - y0 == 2 and 0 < x1 - x0 <= 3


def test_needed_scale_keeps_every_crop_at_full_resolution():
    rng = np.random.default_rng(1)
    plans = plan_crops(4000, 3000, parse_crops("2x224+4x96"), AugmentConfig(), rng)
    s = needed_scale(plans)
    assert 0 < s <= 1
    for p in plans:
        x0, y0, x1, y1 = p.box
        assert min(x1 - x0, y1 - y0) * s >= p.size - 1e-6
    assert math.isclose(max(max(p.size / (p.box[2] - p.box[0]), p.size / (p.box[3] - p.box[1])) for p in plans), s)


def test_rendered_crops_shapes_ranges_and_normalisation():
    aug = AugmentConfig()
    groups = parse_crops("2x64+3x24")
    img = noise_image(120, 90, 2)
    rng = np.random.default_rng(3)
    plans = plan_crops(img.width, img.height, groups, aug, rng)
    assert len(plans) == 5 and [p.size for p in plans] == [64, 64, 24, 24, 24]
    arrays = [render_crop(img, (1.0, 1.0), p) for p in plans]
    assert all(a.dtype == np.uint8 for a in arrays)
    x = normalize_uint8(torch.from_numpy(np.stack(arrays[:2])), aug)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    mean = torch.tensor(aug.mean).view(3, 1, 1)
    std = torch.tensor(aug.std).view(3, 1, 1)
    assert torch.all(x >= (0 - mean) / std - 1e-5) and torch.all(x <= (1 - mean) / std + 1e-5)
    back = (x * std + mean) * 255
    assert torch.allclose(back, torch.from_numpy(np.stack(arrays[:2])).permute(0, 3, 1, 2).float(), atol=1e-3)


def test_augmentation_probabilities_follow_config():
    rng = np.random.default_rng(0)
    plans = [p for _ in range(400) for p in plan_crops(100, 100, parse_crops("1x32"), AugmentConfig(), rng)]
    rate = lambda f: np.mean([f(p) for p in plans])  # noqa: E731
    assert abs(rate(lambda p: p.flip) - 0.5) < 0.08
    assert abs(rate(lambda p: "jitter" in p.extra) - 0.8) < 0.08
    assert abs(rate(lambda p: p.extra["gray"]) - 0.2) < 0.08
    assert abs(rate(lambda p: "blur" in p.extra) - 0.5) < 0.08
    off = plan_crops(100, 100, parse_crops("4x32"), AugmentConfig(0.0, 0.0, 0.0, 0.0, 0.0), rng)
    assert not any(p.flip or p.extra.get("gray") or "jitter" in p.extra or "blur" in p.extra for p in off)


def test_flip_and_grayscale_render_as_expected():
    img = noise_image(64, 64, 5)
    from bigseer.data.multicrop import CropPlan

    plain = render_crop(img, (1.0, 1.0), CropPlan((0, 0, 64, 64), 64, False))
    flipped = render_crop(img, (1.0, 1.0), CropPlan((0, 0, 64, 64), 64, True))
    assert np.array_equal(flipped, plain[:, ::-1])
    gray = render_crop(img, (1.0, 1.0), CropPlan((0, 0, 64, 64), 64, False, {"gray": True}))
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    hue = render_crop(img, (1.0, 1.0), CropPlan((0, 0, 64, 64), 64, False,
                                                {"jitter": ([3, 0, 1, 2], 1.0, 1.0, 1.0, 0.2)}))
    assert np.abs(hue.astype(int) - plain.astype(int)).mean() > 5
