"""resize_box (bigseer.data.resize_kernels) against Pillow's resize(box=), for whole-pixel and fractional
boxes, in both pass orders."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from bigseer.data.pil_resample import vertical_first
from bigseer.data.resize_kernels import resize_box

BILINEAR = Image.Resampling.BILINEAR


def _cases(seed: int, n: int):
    rng = np.random.default_rng(seed)
    for trial in range(n):
        height, width = int(rng.integers(1, 260)), int(rng.integers(1, 260))
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        if trial % 3 == 0:  # flat regions: exact ties of the fixed-point sums
            rgb = (rgb // 50 * 50).astype(np.uint8)
        x0, y0 = float(rng.uniform(0, width / 2)), float(rng.uniform(0, height / 2))
        box = (x0, y0, float(rng.uniform(x0 + 1e-3, width)), float(rng.uniform(y0 + 1e-3, height)))
        if trial % 7 == 0:
            box = (0.0, 0.0, float(width), float(height))
        elif trial % 2 == 0:  # whole pixels (every crop box at decode scale 1)
            box = tuple(float(v) for v in (int(box[0]), int(box[1]), math.ceil(box[2]), math.ceil(box[3])))
        yield rgb, box, int(rng.choice([1, 5, 24, 96, 224]))


def test_resize_box_is_pillows_resize_bitwise_on_rgb_and_rgbx():
    """RGB, and RGBX read in place as the decoder gives it: a cut of a larger read-only array whose X bytes
    are noise (they must not reach channels 0-2). Both pass orders occur."""
    rng = np.random.default_rng(3)
    orders = set()
    for rgb, box, size in _cases(0, 300):
        want = np.asarray(Image.fromarray(rgb).resize((size, size), BILINEAR, box=box))
        height, width = rgb.shape[:2]
        big = rng.integers(0, 256, (height + 3, width + 5, 4), dtype=np.uint8)
        big[2:2 + height, 3:3 + width, :3] = rgb
        big.flags.writeable = False
        for src in (rgb, big[2:2 + height, 3:3 + width]):
            got = resize_box(src, box, size)
            assert got.shape == (size, size, 3) and np.array_equal(got, want), (rgb.shape, box, size)
        orders.add(vertical_first(width, height, size, size))
    assert orders == {True, False}


def test_one_direction_boxes_equal_pils_single_call():
    """A box that spans one axis exactly takes one pass (PIL's need_horizontal / need_vertical)."""
    rng = np.random.default_rng(1)
    for _ in range(60):
        height, width = int(rng.integers(2, 200)), int(rng.integers(2, 200))
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        x0, y0 = float(rng.uniform(0, width / 2)), float(rng.uniform(0, height / 2))
        for box, size in (((x0, 0.0, float(rng.uniform(x0 + 0.1, width)), float(height)), height),
                          ((0.0, y0, float(width), float(rng.uniform(y0 + 0.1, height))), width)):
            want = np.asarray(Image.fromarray(rgb).resize((size, size), BILINEAR, box=box))
            assert np.array_equal(resize_box(rgb, box, size), want), (rgb.shape, box, size)
