"""Robust decoding: every bad-input kind is skipped by reason, every odd-but-valid kind decodes."""

from __future__ import annotations

import io
import resource

import numpy as np
import pytest
from PIL import Image, ImageOps

from bigseer.data.decode import SkipImage, decode_bytes, format_skipped, to_rgb
from bigseer.data.multicrop import AugmentConfig, CropPlan, parse_crops, plan_crops, render_crop
from tests.data.zoo import bad_kinds, exif_rotated_jpeg, good_kinds, jpeg_bytes, noise_image, sixteen_bit_png


def _whole(w: int, h: int) -> list[CropPlan]:
    return [CropPlan((0, 0, w, h), max(w, h), False)]  # no reduction: output as large as the image


@pytest.mark.parametrize("name", sorted(bad_kinds()))
def test_bad_inputs_are_skipped_with_reason(name):
    data, reason = bad_kinds()[name]
    with pytest.raises(SkipImage) as info:
        decode_bytes(data, _whole, min_side=16)
    assert info.value.reason == reason


@pytest.mark.parametrize("name", sorted(good_kinds()))
def test_unusual_valid_images_decode_to_rgb(name):
    data = good_kinds()[name]
    ref = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    img, scale, plans = decode_bytes(data, _whole)
    assert img.mode == "RGB" and img.size == ref.size and scale == (1.0, 1.0)
    assert len(plans) == 1


def test_sixteen_bit_is_scaled_not_clipped():
    img, _, _ = decode_bytes(sixteen_bit_png(), _whole)
    arr = np.asarray(img)
    assert arr[:, :16].min() == 255 and arr[:, 16:].max() == 128 and arr[:, 16:].min() == 128


def test_transparent_pixels_become_white():
    img, _, _ = decode_bytes(good_kinds()["rgba.png"], _whole)
    assert np.asarray(img)[:, :24].min() == 255
    assert np.asarray(img)[:, 24:].min() < 250  # opaque half keeps its colours


def test_exif_rotation_applied_and_geometry_on_oriented_size():
    seen = []

    def plan(w, h):
        seen.append((w, h))
        return _whole(w, h)

    img, _, _ = decode_bytes(exif_rotated_jpeg(6), plan)
    assert seen == [(20, 40)] and img.size == (20, 40)
    arr = np.asarray(img).astype(int)
    top, bottom = arr[:15].mean(axis=(0, 1)), arr[-15:].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 60  # stored left half (red) is displayed on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_tiny_images_decode_when_allowed_and_render_any_crop():
    data = bad_kinds()["tiny.png"][0]
    groups = parse_crops("1x24+1x8")
    rng = np.random.default_rng(0)
    img, scale, plans = decode_bytes(data, lambda w, h: plan_crops(w, h, groups, AugmentConfig(), rng), min_side=1)
    crops = [render_crop(img, scale, p) for p in plans]
    assert [c.shape for c in crops] == [(24, 24, 3), (8, 8, 3)]


def test_bomb_is_rejected_from_header_without_allocating():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(SkipImage) as info:
        decode_bytes(bad_kinds()["bomb.png"][0], _whole, max_pixels=10**12)  # PIL's own limit still applies
    assert info.value.reason == "too_large"
    with pytest.raises(SkipImage) as info:
        decode_bytes(jpeg_bytes(noise_image(64, 64)), _whole, max_pixels=64 * 64 - 1)
    assert info.value.reason == "too_large"
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 200 * 1024


def test_jpeg_draft_decodes_small_but_faithfully():
    data = jpeg_bytes(noise_image(1600, 1200, 11))
    groups = parse_crops("1x64@0.3-1.0")
    aug = AugmentConfig(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, flip_p=0.0)
    diffs, reduced = [], 0
    for s in range(6):
        full, fscale, fplans = decode_bytes(data, lambda w, h: plan_crops(w, h, groups, aug, np.random.default_rng(s)),
                                            reduce=False)
        small, sscale, splans = decode_bytes(data, lambda w, h: plan_crops(w, h, groups, aug, np.random.default_rng(s)))
        assert [p.box for p in fplans] == [p.box for p in splans]  # geometry from the full size
        reduced += small.width < full.width
        a = render_crop(full, fscale, fplans[0]).astype(float)
        b = render_crop(small, sscale, splans[0]).astype(float)
        diffs.append(np.abs(a - b).mean())
    assert reduced == 6
    assert max(diffs) < 4.0, diffs  # mean absolute difference in 0..255 units


def test_to_rgb_handles_cmyk_and_int32():
    assert to_rgb(Image.new("CMYK", (4, 4), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    i32 = Image.fromarray(np.full((4, 4), 65535, dtype=np.int32), "I")
    assert to_rgb(i32).getpixel((0, 0)) == (255, 255, 255)


def test_format_skipped_for_the_training_log():
    assert format_skipped({}) == "skipped 0"
    assert format_skipped({"not_image": 1, "truncated": 2}) == "skipped 3 (truncated 2, not_image 1)"
