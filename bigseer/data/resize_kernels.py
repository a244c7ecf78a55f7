"""PIL's antialiased bilinear ``resize(size, BILINEAR, box=box)`` as numba kernels: bitwise PIL's two passes,
horizontal then vertical (Pillow 13's single call picks the order itself, vertical first for some boxes: <= 1 LSB).

Every crop the CPU loader cuts from a decoded array, whole-pixel boxes and the fractional ones of a reduced
JPEG decode alike. Same arithmetic as PIL's ``Resample.c``: ``precompute_coeffs`` in double (box edges as C
floats, weights summed in order), ``normalize_coeffs_8bpc`` (22-bit fixed point, rounded half away from
zero), a horizontal pass over the rows the vertical pass reads, rounded to uint8 (``clip8``), then the
vertical pass. Sums run in int32 (exact: bilinear weights are >= 0 and sum to 2**22 plus at most half a unit
per tap, so 255 * sum + 2**21 < 2**31), which lets both passes run 8 lanes wide:

- pixels are read as 4-byte RGBX words in place from the decoder's array (an RGB array is padded first);
- the horizontal pass transposes blocks of ``_ROWS`` rows into a (column, row) tile, so each output column is
  a weighted sum of whole tile rows, vectorised over the block's rows, then transposes the result back;
- the vertical pass sums whole output rows.
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


_ROWS = 32  # rows per block of the horizontal pass: its tile is (box width x 32) words, in L2


@numba.njit(cache=True)
def _horizontal(src: np.ndarray, top: int, rows: int, first: np.ndarray, count: np.ndarray, weights: np.ndarray,
                out: np.ndarray) -> None:
    """``ImagingResampleHorizontal_8bpc`` of the RGBX words ``src[top:top + rows]`` into ``out`` (rows, size)
    RGBX words (X = 0), a block of ``_ROWS`` rows at a time through a transposed tile."""
    size = first.shape[0]
    x_lo = first[0]
    span = first[size - 1] + count[size - 1] - x_lo
    k32 = weights.astype(np.int32)
    tile = np.zeros((span, _ROWS), np.uint32)  # tile[x] = column x of the block's rows
    packed = np.empty((size, _ROWS), np.uint32)  # packed[xx] = output column xx of the block's rows
    acc = np.empty((3, _ROWS), np.int32)
    a0, a1, a2 = acc[0], acc[1], acc[2]
    for r0 in range(0, rows, _ROWS):
        nr = min(_ROWS, rows - r0)
        block = src[top + r0:top + r0 + nr, x_lo:x_lo + span]
        if nr == _ROWS:  # a constant trip count: the loads of one column become one gather + a vector store
            for x in range(span):
                col = tile[x]
                for r in range(_ROWS):
                    col[r] = block[r, x]
        else:
            for r in range(nr):
                for x in range(span):
                    tile[x, r] = block[r, x]
        for xx in range(size):
            xmin = first[xx] - x_lo
            for r in range(_ROWS):
                a0[r] = a1[r] = a2[r] = _HALF
            for t in range(count[xx]):
                k = k32[xx, t]
                col = tile[xmin + t]
                for r in range(_ROWS):
                    p = col[r]
                    a0[r] += np.int32(p & 255) * k
                    a1[r] += np.int32((p >> 8) & 255) * k
                    a2[r] += np.int32((p >> 16) & 255) * k
            word = packed[xx]
            for r in range(_ROWS):
                v0 = min(max(a0[r] >> _BITS, 0), 255)
                v1 = min(max(a1[r] >> _BITS, 0), 255)
                v2 = min(max(a2[r] >> _BITS, 0), 255)
                word[r] = np.uint32(v0 | (v1 << 8) | (v2 << 16))
        dst = out[r0:r0 + nr]
        if nr == _ROWS:
            for xx in range(size):
                word = packed[xx]
                for r in range(_ROWS):
                    dst[r, xx] = word[r]
        else:
            for r in range(nr):
                for xx in range(size):
                    dst[r, xx] = packed[xx, r]


@numba.njit(cache=True)
def _vertical(src: np.ndarray, first: np.ndarray, count: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
    """``ImagingResampleVertical_8bpc`` of the uint8 rows ``src`` (rows, n) into ``out`` (size, n), whole rows
    at a time."""
    n = out.shape[1]
    acc = np.empty(n, np.int32)
    for yy in range(out.shape[0]):
        acc[:] = _HALF
        for y in range(count[yy]):
            k = np.int32(weights[yy, y])
            line = src[first[yy] + y]
            for j in range(n):
                acc[j] += np.int32(line[j]) * k
        dst = out[yy]
        for j in range(n):
            v = acc[j] >> _BITS
            dst[j] = 0 if v < 0 else (255 if v > 255 else v)


_RESIZE = types.Array(types.uint8, 3, "C")(types.Array(types.uint32, 2, "A", readonly=True), types.float32,
                                          types.float32, types.float32, types.float32, types.int64)


@numba.njit(_RESIZE, cache=True, nogil=True)  # compiled on import (any layout of RGBX words), none in workers
def _resize(src: np.ndarray, x0: np.float32, y0: np.float32, x1: np.float32, y1: np.float32,
            size: int) -> np.ndarray:
    """``ImagingResample`` of RGBX words into a (size, size, 4) uint8 array: the horizontal pass over the rows
    the vertical pass reads, then the vertical pass; a direction whose box and size match the source is not
    resampled (PIL's need_horizontal / need_vertical)."""
    height, width = src.shape[0], src.shape[1]
    need_h = size != width or x0 != 0 or x1 != size
    need_v = size != height or y0 != 0 or y1 != size
    ys, yc, yw = _coeffs(height, y0, y1, size)
    if need_h:
        top, bottom = ys[0], ys[size - 1] + yc[size - 1]
        xs, xc, xw = _coeffs(width, x0, x1, size)
        mid = np.empty((bottom - top, size), np.uint32)
        _horizontal(src, top, bottom - top, xs, xc, xw, mid)
        ys = ys - top
    else:  # the source words, as they are (X as the decoder left it; only channels 0-2 are returned)
        mid = np.empty((height, width), np.uint32)
        mid[:] = src
    rgbx = mid.view(np.uint8).reshape(mid.shape[0], mid.shape[1] * 4)
    if not need_v:
        return rgbx.reshape(mid.shape[0], mid.shape[1], 4)
    out = np.empty((size, rgbx.shape[1]), np.uint8)
    _vertical(rgbx, ys, yc, yw, out)
    return out.reshape(size, size, 4)


def resize_box(src: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """PIL's ``Image.resize((size, size), BILINEAR, box=box)`` of a uint8 (H, W, 3 or 4) array's channels 0-2,
    bitwise: a (size, size, 3) view of a new RGBX array. ``box`` edges are taken as C floats, as PIL does.
    An RGBX array (the decoder's) is read in place; an RGB one is padded to RGBX first (a copy)."""
    if src.shape[2] != 4 or src.strides[2] != 1 or src.strides[1] != 4 or src.ctypes.data % 4:
        padded = np.empty(src.shape[:2] + (4,), np.uint8)
        padded[..., :3] = src[..., :3]
        padded[..., 3] = 0
        src = padded
    words = src.view(np.uint32)[..., 0]
    x0, y0, x1, y1 = (np.float32(v) for v in box)
    return _resize(words, x0, y0, x1, y1, size)[:, :, :3]
