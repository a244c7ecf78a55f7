"""Pillow's pass order (bigseer.data.pil_resample.vertical_first) against Pillow 13's own resize."""

from __future__ import annotations

import numpy as np
from PIL import Image

from bigseer.data.pil_resample import vertical_first

BILINEAR = Image.Resampling.BILINEAR


def test_vertical_first_is_pillows_pass_order():
    """Pillow's single call equals its two explicit passes in the order vertical_first names (and, where the
    two orders round differently, not the other order): non-square outputs too."""
    rng = np.random.default_rng(4)
    told = 0
    for _ in range(300):
        height, width = int(rng.integers(1, 200)), int(rng.integers(1, 200))
        img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        x0, y0 = float(rng.uniform(0, width / 2)), float(rng.uniform(0, height / 2))
        box = (x0, y0, float(rng.uniform(x0 + 1e-2, width)), float(rng.uniform(y0 + 1e-2, height)))
        sx, sy = int(rng.integers(1, 200)), int(rng.integers(1, 200))
        one = np.asarray(img.resize((sx, sy), BILINEAR, box=box))
        h_first = img.resize((sx, height), BILINEAR, box=(box[0], 0, box[2], height)).resize(
            (sx, sy), BILINEAR, box=(0, box[1], sx, box[3]))
        v_first = img.resize((width, sy), BILINEAR, box=(0, box[1], width, box[3])).resize(
            (sx, sy), BILINEAR, box=(box[0], 0, box[2], sy))
        chosen, other = (v_first, h_first) if vertical_first(width, height, sx, sy) else (h_first, v_first)
        assert np.array_equal(one, np.asarray(chosen)), ((width, height), (sx, sy), box)
        told += not np.array_equal(one, np.asarray(other))
    assert told > 200  # the orders round differently in most cases, so the rule is really tested
