"""The fused CPU augmentation kernels (bigseer.data.augment_kernels) against PIL's ops, bitwise.

The reference composes the ops as the loader did before the kernels: PIL's ``Image.blend`` with
ImageEnhance's degenerate images, ``convert("L")``, ``ImageFilter.GaussianBlur``, and the float32 numpy
HSV rotation that ``adjust_hue_uint8`` was (kept below as the hue reference).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageStat

from bigseer.data.augment_kernels import augment
from bigseer.data.multicrop import AugmentConfig, adjust_hue_uint8, parse_crops, plan_crops


def _numpy_hue(rgb: np.ndarray, factor: float) -> np.ndarray:
    """The previous numpy adjust_hue_uint8: the float32 HSV rotation, op by op."""
    x = rgb.transpose(2, 0, 1).astype(np.float32)
    r, g, b = x
    maxc = np.maximum(np.maximum(r, g), b)
    c = maxc - np.minimum(np.minimum(r, g), b)
    inv = np.reciprocal(np.maximum(c, np.float32(1.0)))
    h = (r - g) * inv + np.float32(4.0)
    h = np.where(maxc == g, (b - r) * inv + np.float32(2.0), h)
    h = np.where(maxc == r, (g - b) * inv + np.float32(0.0), h)
    h = h + np.float32(6.0 * (factor % 1.0) + 6.0)
    k = h[None] + np.array([5.0, 3.0, 1.0], np.float32)[:, None, None]
    k = k - np.floor(k * np.float32(1.0 / 6.0)) * np.float32(6.0)
    k = np.clip(np.minimum(k, np.float32(4.0) - k), np.float32(0.0), np.float32(1.0))
    out = maxc - k * c + np.float32(0.5)
    return out.astype(np.uint8).transpose(1, 2, 0)


def _reference(rgb: np.ndarray, flip: bool, jitter: tuple | None, gray: bool, blur: float | None) -> np.ndarray:
    out = Image.fromarray(rgb, "RGB")
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if jitter is not None:
        order, bright, contrast, sat, hue = jitter
        for op in order:
            if op == 0:
                out = Image.blend(Image.new("RGB", out.size, 0), out, bright)
            elif op == 1:
                mean = int(ImageStat.Stat(out.convert("L")).mean[0] + 0.5)
                out = Image.blend(Image.new("RGB", out.size, (mean, mean, mean)), out, contrast)
            elif op == 2:
                out = Image.blend(out.convert("L").convert("RGB"), out, sat)
            elif abs(hue) >= 1e-9:
                out = Image.fromarray(_numpy_hue(np.asarray(out), hue), "RGB")
    if gray:
        out = out.convert("L")
    if blur is not None:
        out = out.filter(ImageFilter.GaussianBlur(radius=blur))
    arr = np.asarray(out, dtype=np.uint8)
    return np.repeat(arr[:, :, None], 3, axis=2) if arr.ndim == 2 else arr


def _image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if rng.random() < 0.5:  # flat regions and greys: ties in max/min, zero chroma, equal channels
        img = (img // 64 * 64).astype(np.uint8)
        img[: height // 2, : width // 3] = img[: height // 2, : width // 3, :1]
    return img


def test_swav_plans_on_crops_of_every_size_equal_pil_bitwise():
    rng = np.random.default_rng(0)
    groups = parse_crops("2x224+4x96")
    checked = 0
    for seed in range(40):
        height = width = int(rng.choice([1, 2, 5, 17, 96, 224]))
        if seed % 4 == 0:
            height, width = int(rng.integers(1, 70)), int(rng.integers(1, 70))
        img = _image(rng, height, width)
        for p in plan_crops(640, 480, groups, AugmentConfig(), np.random.default_rng(seed)):
            args = (p.flip, p.extra.get("jitter"), bool(p.extra.get("gray")), p.extra.get("blur"))
            got = augment(img, *args)
            assert got.dtype == np.uint8 and got.shape == (height, width, 3) and got.flags.c_contiguous
            assert np.array_equal(got, _reference(img, *args)), (img.shape, p)
            checked += 1
    assert checked == 240


@pytest.mark.parametrize("factors", [(0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.2, 1.8, 0.05), (2.5, 0.4, 3.0)])
def test_every_op_order_with_clipping_factors_equals_pil(factors):
    rng = np.random.default_rng(1)
    img = _image(rng, 31, 45)
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1], [1], [3]):
        for hue in (0.0, 0.37, -0.5, 1e-10):
            jitter = (order, *factors, hue)
            for gray in (False, True):
                assert np.array_equal(augment(img, True, jitter, gray, None), _reference(img, True, jitter, gray, None))


@pytest.mark.parametrize("radius", [0.1, 0.5, 1.0, 1.7, 2.0, 2.5, 4.0, 9.0])
def test_blur_of_any_radius_and_size_equals_pil(radius):
    rng = np.random.default_rng(2)
    for height, width in ((1, 1), (3, 8), (8, 3), (13, 40), (96, 96)):  # the box wider than the image, too
        img = _image(rng, height, width)
        for gray in (False, True):
            assert np.array_equal(augment(img, False, None, gray, radius), _reference(img, False, None, gray, radius))


def test_hue_is_the_float32_rotation_bitwise_and_leaves_the_input():
    rng = np.random.default_rng(3)
    px = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    px[0, :8] = [[0, 0, 0], [255, 255, 255], [7, 7, 7], [255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 1], [1, 9, 9]]
    before = px.copy()
    for factor in (0.1, -0.17, 0.5, -0.5, 0.2, 1e-6, 0.49999, 0.0):
        assert np.array_equal(adjust_hue_uint8(px, factor), _numpy_hue(px, factor)), factor
    assert np.array_equal(px, before)


def test_augment_into_is_normalize_uint8_of_augment_bitwise():
    """The normalised write (the CPU loader's batch) is bitwise the uint8 crop normalised by torch, for every
    plan kind (grey ones too: one plane, three channels' constants), into a batch slot."""
    import torch

    from bigseer.data.augment_kernels import augment_into
    from bigseer.data.multicrop import normalization, normalize_uint8

    rng = np.random.default_rng(5)
    aug = AugmentConfig(mean=(0.3, 0.5, 0.7), std=(0.2, 0.3, 0.11))
    norm = normalization(aug)
    batch = np.full((2, 3, 3, 40, 40), np.nan, np.float32)  # [count, B, 3, S, S]
    kinds = set()
    for seed in range(30):
        img = _image(rng, 40, 40)
        for p in plan_crops(640, 480, parse_crops("2x40"), aug, np.random.default_rng(seed)):
            args = (p.flip, p.extra.get("jitter"), bool(p.extra.get("gray")), p.extra.get("blur"))
            slot = batch[seed % 2, seed % 3]
            augment_into(img, *args, norm[0], norm[1], slot)
            want = normalize_uint8(torch.from_numpy(augment(img, *args)), aug).numpy()
            assert np.array_equal(slot, want), p
            kinds |= {k for k in ("jitter", "gray", "blur") if p.extra.get(k)}
    assert kinds == {"jitter", "gray", "blur"}
