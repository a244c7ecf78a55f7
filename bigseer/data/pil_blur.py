"""PIL's ``GaussianBlur`` as numbers: the extended box radius and the 24-bit box weights of its passes.

``ImageFilter.GaussianBlur(radius)`` is 3 passes of an extended box (Gwosdek et al., SSVM 2011) along x,
then 3 along y, each in integer arithmetic rounded to uint8. Both implementations of SwAV's blur, the
CPU kernels (:mod:`bigseer.data.augment_kernels`) and the tensor path
(:mod:`bigseer.data.tensor_augment`), take their constants from here, computed in PIL's C types.
"""

from __future__ import annotations

import math

import numpy as np

PASSES = 3


def pil_box_radius(radius: float, passes: int = PASSES) -> float:
    """PIL's ``_gaussian_blur_radius``: the extended box radius whose ``passes`` passes give variance radius**2."""
    f = np.float32
    sigma2 = f(radius) * f(radius) / f(passes)
    big_l = f(math.sqrt(12.0 * float(sigma2) + 1.0))
    small_l = f(math.floor((float(big_l) - 1.0) / 2.0))
    a = (f(2) * small_l + f(1)) * (small_l * (small_l + f(1)) - f(3) * sigma2)
    a = a / (f(6) * (sigma2 - (small_l + f(1)) * (small_l + f(1))))
    return float(small_l + a)


def box_weights(box: float) -> tuple[int, int, int]:
    """``ImagingHorizontalBoxBlur``'s integer radius ``r`` and weights for a box radius: ``ww`` for each of
    the ``2 r + 1`` whole taps, ``fw`` for each of the two fractional end taps (they sum to 2**24)."""
    r = int(box)
    ww = int(np.float32(1 << 24) / (np.float32(box) * np.float32(2) + np.float32(1)))
    return r, ww, ((1 << 24) - (r * 2 + 1) * ww) // 2
