"""Compiled (numba) kernels of the CPU crop augmentation: flip, colour jitter, grey and Gaussian blur of
one uint8 crop in a few fused passes, bitwise equal to PIL's ops as the reference path composes them.

The definitions are the ones :func:`bigseer.data.multicrop.render_crop` documents and
:mod:`bigseer.data.tensor_augment` shares: PIL's ``Image.blend`` (float32 ``d + f (i - d)``, clipped,
truncated) against black (brightness), the rounded mean luma (contrast) and the pixel's luma
(saturation); PIL's RGB -> L luma ``(19595 R + 38470 G + 7471 B + 2**15) >> 16``; the exact float32 HSV
hue rotation of :func:`~bigseer.data.multicrop.adjust_hue_uint8`; PIL's ``GaussianBlur`` (3 extended box
passes along x, then 3 along y, integer arithmetic, each pass rounded to uint8).

How: the crop is loaded once (flipped on the way) into float32 planes, which hold uint8 values exactly;
each jitter op is one vectorised loop over the planes (contrast first sums the luma of the image the
earlier ops made); grey replaces the planes by the luma; each blur pass is a running sum over whole rows
(x passes on a tiled transpose) in PIL's own UINT32 arithmetic, 8 lanes wide; one loop writes the result
normalised into float32 3xHxW (the CPU loader's batch; :func:`augment` normalises by the identity and gives
uint8 HxWx3). 3-9x faster than PIL's ops on 96-224 px crops. The one entry kernel compiles when this module is
imported and is cached on disk (``cache=True``); it releases the GIL (``nogil=True``), as PIL's ops did.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import types

from bigseer.data.pil_blur import PASSES, box_weights, pil_box_radius

F32 = np.float32
_ZERO, _ONE, _HALF, _MAX = F32(0.0), F32(1.0), F32(0.5), F32(255.0)
_TWO, _FOUR, _SIX, _SIXTH = F32(2.0), F32(4.0), F32(6.0), F32(1.0 / 6.0)
_N_R, _N_G, _N_B = F32(5.0), F32(3.0), F32(1.0)  # adjust_hue_uint8's per-channel sector offsets
_LR, _LG, _LB, _LROUND, _LSCALE = F32(19595.0), F32(38470.0), F32(7471.0), F32(32768.0), F32(1.0 / 65536.0)
_ROUND24, _SHIFT24 = np.uint32(1 << 23), np.uint32(24)

_IDENTITY = (np.zeros(3, F32), np.ones(3, F32))  # (x - 0) / 1: the planes' values, as they are

# op codes of the jitter program: brightness, contrast, saturation, hue (the plan's order codes)
_BRIGHT, _CONTRAST, _SAT, _HUE = 0, 1, 2, 3


@numba.njit(cache=True, inline="always")
def _luma(r: np.float32, g: np.float32, b: np.float32) -> np.float32:
    return np.floor((r * _LR + g * _LG + b * _LB + _LROUND) * _LSCALE)  # exact: every partial sum < 2**24


@numba.njit(cache=True, inline="always")
def _blend(d: np.float32, v: np.float32, f: np.float32) -> np.float32:
    return np.floor(min(max(d + f * (v - d), _ZERO), _MAX))


@numba.njit(cache=True, inline="always")
def _hue_channel(h: np.float32, offset: np.float32, maxc: np.float32, c: np.float32) -> np.float32:
    k = h + offset
    k = k - np.floor(k * _SIXTH) * _SIX
    k = min(max(min(k, _FOUR - k), _ZERO), _ONE)
    return np.floor(maxc - k * c + _HALF)


@numba.njit(cache=True)
def _jitter(x: np.ndarray, ops: np.ndarray, factors: np.ndarray, shift: np.float32) -> None:
    """The jitter program ``ops`` (op codes, in order) on float32 planes ``x`` (3, N), in place."""
    n = x.shape[1]
    r, g, b = x[0], x[1], x[2]
    for op in ops:
        if op == _BRIGHT:
            f = factors[0]
            for i in range(n):
                r[i], g[i], b[i] = _blend(_ZERO, r[i], f), _blend(_ZERO, g[i], f), _blend(_ZERO, b[i], f)
        elif op == _CONTRAST:
            total = 0.0
            for i in range(n):
                total += float(_luma(r[i], g[i], b[i]))  # exact integers in float64
            mean, f = F32(math.floor(total / n + 0.5)), factors[1]
            for i in range(n):
                r[i], g[i], b[i] = _blend(mean, r[i], f), _blend(mean, g[i], f), _blend(mean, b[i], f)
        elif op == _SAT:
            f = factors[2]
            for i in range(n):
                d = _luma(r[i], g[i], b[i])
                r[i], g[i], b[i] = _blend(d, r[i], f), _blend(d, g[i], f), _blend(d, b[i], f)
        elif op == _HUE:
            for i in range(n):
                fr, fg, fb = r[i], g[i], b[i]
                maxc = max(max(fr, fg), fb)
                c = maxc - min(min(fr, fg), fb)
                inv = _ONE / max(c, _ONE)
                h_b = (fr - fg) * inv + _FOUR
                h_g = (fb - fr) * inv + _TWO
                h_r = (fg - fb) * inv
                h = (h_r if maxc == fr else (h_g if maxc == fg else h_b)) + shift
                r[i] = _hue_channel(h, _N_R, maxc, c)
                g[i] = _hue_channel(h, _N_G, maxc, c)
                b[i] = _hue_channel(h, _N_B, maxc, c)


@numba.njit(cache=True)
def _box_pass(src: np.ndarray, dst: np.ndarray, acc: np.ndarray, radius: int, ww: np.uint32,
              fw: np.uint32) -> None:
    """One ``ImagingHorizontalBoxBlur`` pass along axis 0 of uint32 ``src`` (L, M) into ``dst``: running
    sums of whole rows, edges extended, in PIL's own UINT32 arithmetic (each step truncated to 32 bits, as
    its C does; no sum overflows: the weights add up to 2**24, the values are <= 255)."""
    length, m = src.shape
    last = length - 1
    edge_a = min(radius + 1, length)
    for j in range(m):
        acc[j] = np.uint32(src[0, j] * np.uint32(radius + 1) + src[last, j] * np.uint32(radius - edge_a + 1))
    for y in range(edge_a - 1):
        for j in range(m):
            acc[j] = np.uint32(acc[j] + src[y, j])
    for y in range(length):
        sub, add, far = max(y - radius - 1, 0), min(y + radius, last), min(y + radius + 1, last)
        s_row, a_row, f_row, d_row = src[sub], src[add], src[far], dst[y]
        for j in range(m):
            a = np.uint32(acc[j] + a_row[j] - s_row[j])
            acc[j] = a
            bulk = np.uint32(np.uint32(a * ww) + np.uint32((s_row[j] + f_row[j]) * fw) + _ROUND24)
            d_row[j] = np.uint32(bulk >> _SHIFT24)


@numba.njit(cache=True)
def _y_passes(plane: np.ndarray, passes: int, radius: int, ww: np.uint32, fw: np.uint32) -> None:
    """``passes`` box passes along y of uint32 ``plane`` (H, W), in place."""
    work, acc = np.empty_like(plane), np.empty(plane.shape[1], np.uint32)
    for p in range(passes):
        if p % 2 == 0:
            _box_pass(plane, work, acc, radius, ww, fw)
        else:
            _box_pass(work, plane, acc, radius, ww, fw)
    if passes % 2 == 1:
        plane[:] = work


@numba.njit(cache=True)
def _transpose(src: np.ndarray, dst: np.ndarray) -> None:
    """``dst[x, y] = src[y, x]``, 16 rows at a time: each column of a 16-row block is one contiguous store of
    16 values (a constant trip count, so the loop is unrolled and vectorised), then the last rows one by one."""
    height, width = src.shape
    full = height - height % 16
    for y0 in range(0, full, 16):
        block = src[y0:y0 + 16]
        for x in range(width):
            col = dst[x, y0:y0 + 16]
            for r in range(16):
                col[r] = block[r, x]
    for y in range(full, height):
        for x in range(width):
            dst[x, y] = src[y, x]


@numba.njit(cache=True)
def _blur_plane(plane: np.ndarray, passes: int, radius: int, ww: int, fw: int) -> None:
    """PIL's box blur of float32 ``plane`` (H, W) of uint8 values, in place: ``passes`` along x (on the
    transpose), then along y, in uint32 (8 lanes)."""
    height, width = plane.shape
    u = np.empty((height, width), np.uint32)
    for y in range(height):
        for x in range(width):
            u[y, x] = np.uint32(plane[y, x])
    t = np.empty((width, height), np.uint32)
    w32, f32 = np.uint32(ww), np.uint32(fw)
    _transpose(u, t)
    _y_passes(t, passes, radius, w32, f32)
    _transpose(t, u)
    _y_passes(u, passes, radius, w32, f32)
    for y in range(height):
        for x in range(width):
            plane[y, x] = np.float32(u[y, x])


@numba.njit(cache=True)
def _planes(src: np.ndarray, flip: bool, ops: np.ndarray, factors: np.ndarray, shift: np.float32, gray: bool,
            passes: int, radius: int, ww: int, fw: int) -> np.ndarray:
    """The augmented crop as float32 (3, H * W) planes of uint8 values (grey: plane 0 only)."""
    height, width = src.shape[0], src.shape[1]
    n = height * width
    x = np.empty((3, n), np.float32)
    for y in range(height):
        for i in range(width):
            s = width - 1 - i if flip else i
            x[0, y * width + i], x[1, y * width + i], x[2, y * width + i] = src[y, s, 0], src[y, s, 1], src[y, s, 2]
    _jitter(x, ops, factors, shift)
    chans = 3
    if gray:
        chans = 1
        for i in range(n):
            x[0, i] = _luma(x[0, i], x[1, i], x[2, i])
    if passes > 0:
        for c in range(chans):
            plane = x[c].reshape(height, width)
            _blur_plane(plane, passes, radius, ww, fw)
    return x


# any uint8 HxWx3 layout (the resize kernel's RGBX view, the PIL path's read-only arrays): one signature, one
# entry (compile time), compiled when this module is imported (from the on-disk cache afterwards), none in workers
_SRC = types.Array(types.uint8, 3, "A", readonly=True)
_OPS = (types.boolean, types.Array(types.int64, 1, "C"), types.Array(types.float32, 1, "C"), types.float32,
        types.boolean, types.int64, types.int64, types.int64, types.int64)
_KERNEL_INTO = types.void(_SRC, *_OPS, types.Array(types.float32, 1, "C", readonly=True),
                          types.Array(types.float32, 1, "C", readonly=True), types.Array(types.float32, 3, "C"))


@numba.njit(_KERNEL_INTO, cache=True, nogil=True)
def _kernel_into(src: np.ndarray, flip: bool, ops: np.ndarray, factors: np.ndarray, shift: np.float32,
                 gray: bool, passes: int, radius: int, ww: int, fw: int, mean: np.ndarray, std: np.ndarray,
                 out: np.ndarray) -> None:
    """The crop written into float32 ``out`` (3, H, W) as ``(x - mean[c]) / std[c]`` in float32: the values
    ``normalize_uint8`` computes from the uint8 crop (the planes hold the uint8 values exactly)."""
    x = _planes(src, flip, ops, factors, shift, gray, passes, radius, ww, fw)
    n = x.shape[1]
    for c in range(3):
        plane = x[0] if gray else x[c]
        m, s = mean[c], std[c]
        dst = out[c].reshape(n)
        for i in range(n):
            dst[i] = (plane[i] - m) / s


def _program(jitter: tuple | None, blur: float | None, passes: int) -> tuple:
    """The kernels' arguments for a plan's jitter and blur: op codes, factors, hue shift, blur passes and box."""
    order, bright, contrast, sat, hue = jitter if jitter is not None else ((), 1.0, 1.0, 1.0, 0.0)
    ops = np.array([op for op in order if op != _HUE or abs(hue) >= 1e-9], np.int64)  # a zero hue is skipped
    factors = np.array((bright, contrast, sat), F32)
    box = pil_box_radius(blur, passes) if blur is not None else 0.0
    radius, ww, fw = box_weights(box)
    return ops, factors, F32(6.0 * (hue % 1.0) + 6.0), passes if box != 0.0 else 0, radius, int(ww), int(fw)


def augment(src: np.ndarray, flip: bool, jitter: tuple | None, gray: bool, blur: float | None,
            passes: int = PASSES) -> np.ndarray:
    """Flip, colour jitter (``(order, brightness, contrast, saturation, hue)`` as plan_crops draws it), grey
    and blur of a uint8 (H, W, 3) crop; returns a new uint8 (H, W, 3) C-contiguous array."""
    out = np.empty((3,) + src.shape[:2], F32)
    augment_into(src, flip, jitter, gray, blur, _IDENTITY[0], _IDENTITY[1], out, passes)
    return out.transpose(1, 2, 0).astype(np.uint8, order="C")  # the planes hold uint8 values exactly


def augment_into(src: np.ndarray, flip: bool, jitter: tuple | None, gray: bool, blur: float | None,
                 mean: np.ndarray, std: np.ndarray, out: np.ndarray, passes: int = PASSES) -> None:
    """:func:`augment`, written into C-contiguous float32 ``out`` (3, H, W) normalised as ``(x - mean) / std``
    per channel (float32 (3,) arrays), in the same pass: bitwise ``normalize_uint8`` of :func:`augment`'s crop."""
    ops, factors, shift, passes, radius, ww, fw = _program(jitter, blur, passes)
    _kernel_into(src, flip, ops, factors, shift, gray, passes, radius, ww, fw, mean, std, out)
