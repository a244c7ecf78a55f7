"""PIL's antialiased bilinear ``resize(size, BILINEAR, box=box)`` as numba kernels: bitwise PIL's two passes,
horizontal then vertical (Pillow 13's single call picks the order itself, vertical first for some boxes: <= 1 LSB).

For crop boxes with fractional edges (crops of a reduced-size JPEG decode), which torch's uint8 kernel
(:func:`bigseer.data.multicrop.resize_array`, whole-pixel boxes) cannot take. Same arithmetic as PIL's
``Resample.c``: ``precompute_coeffs`` in double (box edges as C floats, weights summed in order),
``normalize_coeffs_8bpc`` (22-bit fixed point, rounded half away from zero), a horizontal pass over the rows
the vertical pass reads, rounded to uint8 (``clip8``), then the vertical pass. Read in place from the
decoder's RGB or RGBX array (no crop or mode-conversion copies); the vertical pass runs over whole rows.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import types

_BITS = 22
_HALF = 1 << (_BITS - 1)


@numba.njit(cache=True)
def _coeffs(in_size: int, in0: np.float32, in1: np.float32, out_size: int) -> tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray]:
    """``precompute_coeffs`` (bilinear) + ``normalize_coeffs_8bpc``: first tap, tap count, int weights."""
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
            weights[xx, x] = int(-0.5 + k * (1 << _BITS)) if k < 0 else int(0.5 + k * (1 << _BITS))
        first[xx], count[xx] = xmin, max(xmax, 0)
    return first, count, weights


@numba.njit(cache=True, inline="always")
def _clip8(ss: int) -> np.uint8:
    v = ss >> _BITS
    return np.uint8(0 if v < 0 else (255 if v > 255 else v))


@numba.njit(cache=True)
def _horizontal(src: np.ndarray, y0: int, rows: int, first: np.ndarray, count: np.ndarray, weights: np.ndarray,
                out: np.ndarray) -> None:
    """``ImagingResampleHorizontal_8bpc`` of source rows ``y0 .. y0 + rows`` (channels 0-2) into ``out``."""
    for yy in range(rows):
        row = src[y0 + yy]
        for xx in range(first.shape[0]):
            s0 = s1 = s2 = _HALF
            xmin = first[xx]
            for x in range(count[xx]):
                k = weights[xx, x]
                s0 += np.int64(row[xmin + x, 0]) * k
                s1 += np.int64(row[xmin + x, 1]) * k
                s2 += np.int64(row[xmin + x, 2]) * k
            out[yy, xx, 0], out[yy, xx, 1], out[yy, xx, 2] = _clip8(s0), _clip8(s1), _clip8(s2)


@numba.njit(cache=True)
def _vertical(src: np.ndarray, y0: int, first: np.ndarray, count: np.ndarray, weights: np.ndarray,
              out: np.ndarray) -> None:
    """``ImagingResampleVertical_8bpc`` of ``src`` (rows from source row ``y0``) into ``out``, whole rows at a
    time (exact in float64: every sum is an integer below 2**31)."""
    height, n = out.shape[0], out.shape[1] * out.shape[2]
    flat_src = src.reshape(src.shape[0], n)
    flat_out = out.reshape(height, n)
    acc = np.empty(n, np.float64)
    for yy in range(height):
        acc[:] = _HALF
        for y in range(count[yy]):
            k = float(weights[yy, y])
            line = flat_src[first[yy] + y - y0]
            for j in range(n):
                acc[j] += line[j] * k
        dst = flat_out[yy]
        for j in range(n):
            v = math.floor(acc[j] * (1.0 / (1 << _BITS)))
            dst[j] = 0 if v < 0 else (255 if v > 255 else v)


_RESIZE = types.Array(types.uint8, 3, "C")(types.Array(types.uint8, 3, "A", readonly=True), types.float32,
                                          types.float32, types.float32, types.float32, types.int64)


@numba.njit(_RESIZE, cache=True, nogil=True)  # compiled on import (any layout, RGB or RGBX), none in workers
def _resize(src: np.ndarray, x0: np.float32, y0: np.float32, x1: np.float32, y1: np.float32,
            size: int) -> np.ndarray:
    """``ImagingResample``: the horizontal pass over the rows the vertical pass reads, then the vertical pass;
    a direction whose box and size match the source is not resampled (PIL's need_horizontal / need_vertical)."""
    height, width = src.shape[0], src.shape[1]
    need_h = size != width or x0 != 0 or x1 != size
    need_v = size != height or y0 != 0 or y1 != size
    if need_h:
        ys, yc, yw = _coeffs(height, y0, y1, size)
        top, bottom = ys[0], ys[size - 1] + yc[size - 1]
        xs, xc, xw = _coeffs(width, x0, x1, size)
        mid = np.empty((bottom - top, size, 3), np.uint8)
        _horizontal(src, top, bottom - top, xs, xc, xw, mid)
    else:  # channels 0-2 of the source, as is
        ys, yc, yw = _coeffs(height, y0, y1, size)
        top = 0
        mid = np.empty((height, width, 3), np.uint8)
        for y in range(height):
            for x in range(width):
                mid[y, x, 0], mid[y, x, 1], mid[y, x, 2] = src[y, x, 0], src[y, x, 1], src[y, x, 2]
    if not need_v:
        return mid
    out = np.empty((size, mid.shape[1], 3), np.uint8)
    _vertical(mid, top, ys, yc, yw, out)
    return out


def resize_box(src: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """PIL's ``Image.resize((size, size), BILINEAR, box=box)`` of a uint8 (H, W, 3 or 4) array's channels 0-2,
    bitwise; a new uint8 (size, size, 3) array. ``box`` edges are taken as C floats, as PIL does."""
    x0, y0, x1, y1 = (np.float32(v) for v in box)
    return _resize(src, x0, y0, x1, y1, size)
