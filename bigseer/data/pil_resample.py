"""PIL's antialiased bilinear resampling as numbers: its coefficients and Pillow 13's pass order.

``Image.resize(size, BILINEAR, box=box)`` is two separable passes (``Resample.c``), each rounded to uint8:
``precompute_coeffs`` in double (box edges as C floats, weights summed in order), ``normalize_coeffs_8bpc``
(22-bit fixed point, rounded half away from zero). Both implementations of the crop resize, the CPU kernels
(:mod:`bigseer.data.resize_kernels`) and the tensor path (:mod:`bigseer.data.tensor_augment`), take their
coefficients and their pass order from here.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import types

PRECISION_BITS = 22

_I64, _I64_2D = types.Array(types.int64, 1, "C"), types.Array(types.int64, 2, "C")


@numba.njit(types.Tuple((_I64, _I64, _I64_2D))(types.int64, types.float32, types.float32, types.int64), cache=True)
def coeffs(in_size: int, in0: np.float32, in1: np.float32, out_size: int) -> tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray]:
    """PIL's ``precompute_coeffs`` (bilinear) + ``normalize_coeffs_8bpc`` of output pixels ``0..out_size``
    over the source span ``in0..in1`` (C floats) of ``in_size`` pixels: each output's first source pixel,
    tap count and integer weights (22-bit fixed point; >= 0, summing to 2**22 up to half a unit per tap)."""
    scale = float(in1 - in0) / out_size  # the box width in C float, then double
    filterscale = max(scale, 1.0)
    support = filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    first = np.empty(out_size, np.int64)
    count = np.empty(out_size, np.int64)
    weights = np.zeros((out_size, ksize), np.int64)
    prek = np.empty(ksize, np.float64)
    inv = 1.0 / filterscale
    for xx in range(out_size):
        center = float(in0) + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        ww = 0.0
        for x in range(xmax):
            t = abs((x + xmin - center + 0.5) * inv)
            w = 1.0 - t if t < 1.0 else 0.0
            prek[x] = w
            ww += w
        for x in range(xmax):
            k = prek[x] / ww if ww != 0.0 else prek[x]
            weights[xx, x] = int(-0.5 + k * (1 << PRECISION_BITS)) if k < 0 else int(0.5 + k * (1 << PRECISION_BITS))
        first[xx], count[xx] = xmin, max(xmax, 0)
    return first, count, weights


def vertical_first(width: int, height: int, out_width: int, out_height: int) -> bool:
    """Pillow 13's choice of pass order for a ``width`` x ``height`` source (the whole image ``resize`` is
    called on, whatever its box): the vertical pass first when the height shrinks by more than twice as many
    pixels as the width does (Pillow PR 9549; checked on 3,000 random sizes and boxes against Pillow 13.0)."""
    return height - out_height > 2 * max(width - out_width, 0)
