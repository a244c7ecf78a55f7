"""Crop specs, RandomResizedCrop geometry, augmentation output."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bigseer.data.multicrop import (AugmentConfig, CropGroup, adjust_hue_uint8, format_crops, needed_scale,
                                    normalize_uint8, parse_crops, plan_crops, random_resized_box, render_crop)
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


# --- the uint8 path against the previous PIL path (verbatim copy of it, commit 2666d6d) ---

def _previous_hue(img, factor):
    from PIL import Image

    if abs(factor) < 1e-9:
        return img
    h, s, v = img.convert("HSV").split()
    shifted = (np.asarray(h, dtype=np.uint8) + np.uint8(int(round(factor * 255)) % 256))
    return Image.merge("HSV", (Image.fromarray(shifted.astype(np.uint8), "L"), s, v)).convert("RGB")


def _previous_render_crop(img, scale_xy, plan):
    from PIL import Image, ImageEnhance, ImageFilter

    sx, sy = scale_xy
    x0, y0, x1, y1 = plan.box
    box = (x0 * sx, y0 * sy, min(x1 * sx, img.width), min(y1 * sy, img.height))
    out = img.resize((plan.size, plan.size), Image.Resampling.BILINEAR, box=box)
    if plan.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    jitter = plan.extra.get("jitter")
    if jitter is not None:
        order, bright, contrast, sat, hue = jitter
        for op in order:
            if op == 0:
                out = ImageEnhance.Brightness(out).enhance(bright)
            elif op == 1:
                out = ImageEnhance.Contrast(out).enhance(contrast)
            elif op == 2:
                out = ImageEnhance.Color(out).enhance(sat)
            else:
                out = _previous_hue(out, hue)
    if plan.extra.get("gray"):
        out = out.convert("L").convert("RGB")
    radius = plan.extra.get("blur")
    if radius is not None:
        out = out.filter(ImageFilter.GaussianBlur(radius=radius))
    return np.asarray(out, dtype=np.uint8)


def _has_hue(plan) -> bool:
    jitter = plan.extra.get("jitter")
    return jitter is not None and abs(jitter[4]) >= 1e-9


def test_uint8_path_equals_previous_path_without_hue_and_stays_close_with_it():
    img = noise_image(300, 200, 4)
    groups = parse_crops("2x64+4x24")
    same = hue_means = 0
    worst_hue_mean = 0.0
    for seed in range(60):
        for p in plan_crops(300, 200, groups, AugmentConfig(), np.random.default_rng(seed)):
            new = render_crop(img, (0.9, 0.8), p).astype(int)  # a reduced decode's scale, too
            old = _previous_render_crop(img, (0.9, 0.8), p).astype(int)
            if _has_hue(p):
                worst_hue_mean = max(worst_hue_mean, float(np.abs(new - old).mean()))
                hue_means += 1
            else:  # resize/flip/brightness/contrast/saturation/grey/blur: the same PIL ops
                assert np.array_equal(new, old), p
                same += 1
    assert same > 50 and hue_means > 50
    assert worst_hue_mean <= 2.0, worst_hue_mean  # crop mean; the hue op alone is checked below


def test_hue_is_the_exact_hsv_rotation_and_near_the_previous_uint8_one():
    import colorsys

    from PIL import Image

    rng = np.random.default_rng(1)
    px = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    px[0, :6] = [[0, 0, 0], [255, 255, 255], [7, 7, 7], [255, 0, 0], [0, 255, 0], [0, 0, 255]]  # grey, primaries
    for factor in (0.1, -0.17, 0.5, 0.2, -0.5, 1e-6):
        ref = np.array([colorsys.hsv_to_rgb((h + factor) % 1.0, s, v)
                        for h, s, v in (colorsys.rgb_to_hsv(*(p / 255.0)) for p in px.reshape(-1, 3))]) * 255
        got = adjust_hue_uint8(px, factor).reshape(-1, 3).astype(float)
        assert np.abs(got - ref).max() <= 0.5 + 1e-3, factor  # float32 formula, rounded once
        old = np.asarray(_previous_hue(Image.fromarray(px), factor), dtype=int).reshape(-1, 3)
        assert np.abs(got - old).max() <= 17, factor  # PIL's uint8 HSV round trip, docstring bound
    assert np.array_equal(adjust_hue_uint8(px, 0.0), px)


def test_normalize_uint8_is_the_previous_formula_bitwise():
    """x - 255 mean, then / (255 std), in float32, bit for bit; every uint8 value, a strided input too."""
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8, 3), dtype=np.uint8))
    x[0].view(-1)[:256] = torch.arange(256, dtype=torch.uint8)
    aug = AugmentConfig()
    mean = torch.tensor(aug.mean).view(3, 1, 1) * 255.0
    std = torch.tensor(aug.std).view(3, 1, 1) * 255.0
    for batch in (x, x.transpose(2, 3)):
        want = ((batch.movedim(-1, -3).to(torch.float32) - mean) / std).contiguous()
        got = normalize_uint8(batch, aug)
        assert got.is_contiguous() and got.dtype == torch.float32 and got.shape == (2, 3, 3, 8, 8)
        assert torch.equal(got, want)


def test_array_crops_are_pil_ops_on_the_cut_box():
    """render_crop from an RGB or RGBX array (the CPU loader's input) is bitwise the PIL ops on the pixels
    the box touches (cut, then resized, as torchvision's RandomResizedCrop does), whole-pixel boxes (scale 1)
    and fractional ones (a reduced decode) alike."""
    from PIL import Image

    from bigseer.data.multicrop import CropPlan, crop_box, enclosing_box

    img = np.array(noise_image(300, 200, 4))
    groups = parse_crops("2x64+4x24")
    kinds = set()
    for seed in range(40):
        for p in plan_crops(300, 200, groups, AugmentConfig(), np.random.default_rng(seed)):
            for scale in ((1.0, 1.0), (0.9, 0.8)):  # scale 1: whole-pixel boxes; else fractional
                arr = img if scale == (1.0, 1.0) else np.array(Image.fromarray(img).resize((270, 160)))
                arr4 = np.concatenate([arr, np.zeros((*arr.shape[:2], 1), np.uint8)], axis=2)
                h, w = arr.shape[:2]
                box = crop_box(w, h, scale, p)
                x0, y0, x1, y1 = enclosing_box(box, w, h)
                if scale == (1.0, 1.0):
                    assert (x0, y0, x1, y1) == p.box  # plan boxes are whole pixels
                cut = Image.fromarray(np.ascontiguousarray(arr[y0:y1, x0:x1]))
                rel = CropPlan((box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0), p.size, p.flip, p.extra)
                want = render_crop(cut, (1.0, 1.0), rel).astype(int)
                for a in (arr, arr4):
                    d = np.abs(render_crop(a, scale, p).astype(int) - want)
                    assert not d.any(), (seed, scale, p.box)  # the same PIL ops on the same pixels
                kinds |= {k for k in ("jitter", "gray", "blur") if p.extra.get(k)}
    assert kinds == {"jitter", "gray", "blur"}


def test_augment_config_of_a_run_config_takes_the_fields_of_the_same_names() -> None:
    """One augmentation config: pretraining's config fields (and a config file's ``augment`` section) have its
    names, so nothing is mapped by hand; fields the run config lacks keep their defaults."""
    from bigseer.config import PretrainConfig

    cfg = PretrainConfig(flip_p=0.0, jitter_strength=0.4, grayscale_p=0.1, blur_p=0.3, crop_ratio=(1.0, 1.0))
    aug = AugmentConfig.of(cfg)
    assert (aug.flip_p, aug.jitter_strength, aug.grayscale_p, aug.blur_p, aug.crop_ratio) == (0.0, 0.4, 0.1, 0.3,
                                                                                              (1.0, 1.0))
    assert (aug.jitter_p, aug.blur_radius) == (AugmentConfig().jitter_p, AugmentConfig().blur_radius)
