"""Pillow 13's antialiased bilinear ``resize(size, BILINEAR, box=box)`` as numba kernels, bitwise.

Every crop the CPU loader cuts from a decoded array, whole-pixel boxes and the fractional ones of a reduced
JPEG decode alike. Same arithmetic as PIL's ``Resample.c``: its coefficients
(:func:`~bigseer.data.pil_resample.coeffs`), two passes each rounded to uint8 (``clip8``), the first over
the rows (columns) the second reads, in the order Pillow 13 picks
(:func:`~bigseer.data.pil_resample.vertical_first`). Sums run in int32 (exact: bilinear weights are >= 0
and sum to 2**22 plus at most half a unit per tap, so 255 * sum + 2**21 < 2**31), so both passes run 8 lanes
wide:

- pixels are read as 4-byte RGBX words (little-endian: R is the low byte) in place from the decoder's array
  (an RGB array is padded first);
- the horizontal pass transposes blocks of ``_ROWS`` rows into a (column, row) tile, so each output column is
  a weighted sum of whole tile rows, vectorised over the block's rows, then transposes the result back;
- the vertical pass sums whole rows.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types

from bigseer.data.pil_resample import PRECISION_BITS as _BITS
from bigseer.data.pil_resample import coeffs, vertical_first

_HALF = 1 << (_BITS - 1)


_ROWS = 32  # rows per block of the horizontal pass: its tile is (box width x 32) words, in L2

# one compiled variant per pass (compile time: each is large once unrolled), compiled on import, none in workers
_COEFFS = (types.Array(types.int64, 1, "C"), types.Array(types.int64, 1, "C"), types.Array(types.int64, 2, "C"))
_OUT = types.Array(types.uint32, 2, "C")
_H_SIG = types.void(types.Array(types.uint32, 2, "A", readonly=True), types.int64, types.int64, *_COEFFS, _OUT)
_V_SIG = types.void(types.Array(types.uint32, 2, "C", readonly=True), *_COEFFS, _OUT)


@numba.njit(cache=True, inline="always")
def _accumulate(a0: np.ndarray, a1: np.ndarray, a2: np.ndarray, words: np.ndarray, k: np.int32, n: int) -> None:
    """``a_c[i] += channel c of words[i] * k`` for ``i < n``: one tap of either pass, over whole vectors."""
    for i in range(n):
        p = words[i]
        a0[i] += np.int32(p & 255) * k
        a1[i] += np.int32((p >> 8) & 255) * k
        a2[i] += np.int32((p >> 16) & 255) * k


@numba.njit(cache=True, inline="always")
def _pack(a0: np.ndarray, a1: np.ndarray, a2: np.ndarray, out: np.ndarray, n: int) -> None:
    """PIL's ``clip8`` of the three sums, packed into RGBX words (X = 0): ``out[i]`` for ``i < n``."""
    for i in range(n):
        v0 = min(max(a0[i] >> _BITS, 0), 255)
        v1 = min(max(a1[i] >> _BITS, 0), 255)
        v2 = min(max(a2[i] >> _BITS, 0), 255)
        out[i] = np.uint32(v0 | (v1 << 8) | (v2 << 16))


@numba.njit(_H_SIG, cache=True, nogil=True)
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
                _accumulate(a0, a1, a2, tile[xmin + t], k32[xx, t], _ROWS)
            _pack(a0, a1, a2, packed[xx], _ROWS)
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


@numba.njit(_V_SIG, cache=True, nogil=True)
def _vertical(src: np.ndarray, first: np.ndarray, count: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
    """``ImagingResampleVertical_8bpc`` of the C-contiguous RGBX words ``src`` (rows, n) into ``out`` (size, n)
    RGBX words (X = 0), whole rows at a time (contiguous rows: the loops vectorise)."""
    n = out.shape[1]
    acc = np.empty((3, n), np.int32)
    a0, a1, a2 = acc[0], acc[1], acc[2]
    for yy in range(out.shape[0]):
        a0[:] = _HALF
        a1[:] = _HALF
        a2[:] = _HALF
        for y in range(count[yy]):
            _accumulate(a0, a1, a2, src[first[yy] + y], np.int32(weights[yy, y]), n)
        _pack(a0, a1, a2, out[yy], n)


def _resize(src: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """``ImagingResample`` of RGBX words into new RGBX words: a direction whose box and size match the source
    is not resampled (PIL's need_horizontal / need_vertical); with both, the pass Pillow 13 picks runs first,
    over the rows (columns) the second pass reads. A vertical pass reads contiguous rows (a cut of the
    source is copied first)."""
    height, width = src.shape
    x0, y0, x1, y1 = (np.float32(v) for v in box)
    need_h = size != width or x0 != 0 or x1 != size
    need_v = size != height or y0 != 0 or y1 != size
    ys, yc, yw = coeffs(height, y0, y1, size)
    xs, xc, xw = coeffs(width, x0, x1, size)
    top, bottom = int(ys[0]), int(ys[-1] + yc[-1])
    if need_h and need_v and vertical_first(width, height, size, size):
        x_lo, x_hi = int(xs[0]), int(xs[-1] + xc[-1])
        mid = np.empty((size, x_hi - x_lo), np.uint32)
        _vertical(np.ascontiguousarray(src[top:bottom, x_lo:x_hi]), ys - top, yc, yw, mid)
        out = np.empty((size, size), np.uint32)
        _horizontal(mid, 0, size, xs - x_lo, xc, xw, out)
        return out
    if need_h:
        rows = (top, bottom) if need_v else (0, height)
        out = np.empty((rows[1] - rows[0], size), np.uint32)
        _horizontal(src, rows[0], rows[1] - rows[0], xs, xc, xw, out)
        if not need_v:
            return out
        mid, out = out, np.empty((size, size), np.uint32)
        _vertical(mid, ys - top, yc, yw, out)
        return out
    if need_v:
        out = np.empty((size, width), np.uint32)
        _vertical(np.ascontiguousarray(src[top:bottom]), ys - top, yc, yw, out)
        return out
    return src.copy()  # the source words, as they are (X as the decoder left it; only channels 0-2 are returned)


def resize_box(src: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """Pillow 13's ``Image.resize((size, size), BILINEAR, box=box)`` of a uint8 (H, W, 3 or 4) array's channels
    0-2, bitwise (its pass order included): a (size, size, 3) view of a new RGBX array. ``box`` edges are
    taken as C floats, as PIL does. An RGBX array (the decoder's) is read in place; an RGB one is padded to
    RGBX first (a copy)."""
    if src.shape[2] != 4 or src.strides[2] != 1 or src.strides[1] != 4 or src.ctypes.data % 4:
        padded = np.empty(src.shape[:2] + (4,), np.uint8)
        padded[..., :3] = src[..., :3]
        padded[..., 3] = 0
        src = padded
    out = _resize(src.view(np.uint32)[..., 0], box, size)
    return out.view(np.uint8).reshape(out.shape[0], out.shape[1], 4)[:, :, :3]
