"""Multi-crop augmentation as torch ops on any device: the GPU path, and its CPU run that tests check.

:func:`render_crop_tensor` is :func:`bigseer.data.multicrop.render_crop` op by op, on float32
values kept on the uint8 grid (each op rounds or truncates where PIL does), so ``device="cuda"``
is only a device switch: nvjpeg instead of libjpeg-turbo for the decode (full size, scale 1) and
the same torch code for everything after it. Per op, against the CPU path: resize (the pixels the box
touches cut first, as render_crop does for arrays; PIL's bilinear antialias coefficients for the same
box in PIL's 22-bit fixed point, rounded after each pass, in Pillow's pass order: bitwise, as the CPU
kernel), grey (PIL's integer luma) and blur (PIL's extended box blur) are PIL's integer arithmetic,
carried exactly (float64 / float32 / int64 integers); flip and EXIF orientation are permutations;
brightness, contrast, saturation (PIL's float32 blend, truncated) and hue (the float32 formula of
``adjust_hue_uint8``) can differ by 1 LSB where two float kernels round a tie differently. Whole
crop: a 1-LSB tie passes through at most four later ops that scale differences by <= 1.8 each,
so max |diff| <= 1 + 1.8 + 1.8**2 + 1.8**3 < 12; tests/data/test_render.py checks that, and that
mean |diff| <= 0.01 LSB (no systematic difference).
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch
from PIL import Image

from bigseer.data.multicrop import CropPlan, crop_box, enclosing_box
from bigseer.data.pil_blur import box_weights, pil_box_radius
from bigseer.data.pil_resample import PRECISION_BITS, coeffs, vertical_first
from bigseer.errors import ConfigError

_FIXED = float(1 << PRECISION_BITS)  # PIL's fixed point for 8-bit resampling
_HUE_OFFSETS = (5.0, 3.0, 1.0)


def resolve_device(device: str | torch.device) -> torch.device:
    """``torch.device`` for the tensor path; ConfigError (one line) for a bad or unavailable one."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"decode device must be 'cpu' or 'cuda[:N]', got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"decode device must be 'cpu' or 'cuda[:N]', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"decode device {device!r} needs CUDA, but torch.cuda.is_available() is False")
    return dev


def as_chw_uint8(img: object, device: torch.device | str) -> torch.Tensor:
    """A PIL RGB image, a uint8 ``HxWx3`` array or a ``[3, H, W]`` tensor as ``[3, H, W]`` uint8 on ``device``."""
    if isinstance(img, torch.Tensor):
        return img.to(device)
    if isinstance(img, Image.Image):
        img = np.asarray(img.convert("RGB") if img.mode != "RGB" else img)
    arr = np.require(img, np.uint8, ("C", "W"))  # copies only read-only (PIL) or strided arrays
    return torch.from_numpy(arr).to(device).permute(2, 0, 1)


def orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply EXIF orientation 1..8 to ``[C, H, W]`` exactly as PIL's transposes in decode.py."""
    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-2, -1)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(img, -1, (-2, -1))
    if orientation == 7:
        return img.flip(-2, -1).transpose(-2, -1)
    if orientation == 8:
        return torch.rot90(img, 1, (-2, -1))
    return img


def _nvjpeg(data: bytes, device: torch.device, size: tuple[int, int]) -> torch.Tensor | None:
    """Full-size nvjpeg decode, or None (unsupported stream, size mismatch) to fall back to the CPU."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its decoders in favour of torchcodec
            out = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                              device=device)
    except (RuntimeError, ValueError):
        return None
    return out if tuple(out.shape) == (3, size[1], size[0]) else None


def decode_to_device(img: Image.Image, data: bytes | None, orientation: int, device: str | torch.device,
                     cpu_pixels: Callable[[], np.ndarray | Image.Image]) -> torch.Tensor:
    """Oriented uint8 ``[3, H, W]`` pixels of an opened image on ``device`` (decode.py's tensor
    branch): nvjpeg for JPEG ``data`` on CUDA, else ``cpu_pixels()`` (decode.py's CPU decoders at
    reduced scale, stored orientation). SkipImage."""
    dev = torch.device(device)
    pixels = _nvjpeg(data, dev, img.size) if dev.type == "cuda" and data is not None else None
    if pixels is None:
        pixels = as_chw_uint8(cpu_pixels(), dev)
    return orient(pixels, orientation)


def pil_bilinear_coeffs(in_size: int, in0: float, in1: float, out_size: int) -> tuple[int, np.ndarray]:
    """PIL's bilinear coefficients (:func:`~bigseer.data.pil_resample.coeffs`) as the first input index used
    and a dense ``[out_size, n]`` matrix of the integer weights (as float64)."""
    first, count, weights = coeffs(in_size, np.float32(in0), np.float32(in1), out_size)
    lo = int(first.min())
    dense = np.zeros((out_size, int((first + count).max()) - lo))
    taps = np.arange(weights.shape[1])
    used = taps[None] < count[:, None]
    rows = np.broadcast_to(np.arange(out_size)[:, None], used.shape)
    dense[rows[used], (first[:, None] - lo + taps[None])[used]] = weights[used]
    return lo, dense


def _fixed_to_u8(acc: torch.Tensor) -> torch.Tensor:
    """PIL's ``clip8``: ``(acc + 2**21) >> 22`` clipped to 0..255 (exact on float64 integers)."""
    return torch.floor((acc + _FIXED / 2) * (1.0 / _FIXED)).clamp_(0.0, 255.0)


def resize_box(img: torch.Tensor, box: tuple[float, float, float, float], size: int) -> torch.Tensor:
    """Pillow 13's ``resize((size, size), BILINEAR, box=box)`` of uint8(-valued) ``[C, H, W]``, as float32.

    Two passes in the order Pillow picks (:func:`~bigseer.data.pil_resample.vertical_first`), each rounded
    to uint8 as PIL does, in PIL's integer fixed-point arithmetic carried exactly by float64 matmuls
    (products < 2**30, sums < 2**53). Only the rows and columns the coefficients touch are converted.
    """
    _, height, width = img.shape
    x0, y0, x1, y1 = box
    need_h = size != width or x0 != 0 or x1 != size  # PIL's test, including its box[2] != xsize
    need_v = size != height or y0 != 0 or y1 != size
    ylo, wy = pil_bilinear_coeffs(height, y0, y1, size)
    xlo, wx = pil_bilinear_coeffs(width, x0, x1, size)
    rows = slice(ylo, ylo + wy.shape[1]) if need_v else slice(None)
    cols = slice(xlo, xlo + wx.shape[1]) if need_h else slice(None)
    out = img[:, rows, cols].to(torch.float64)
    wy_t, wx_t = torch.from_numpy(wy).to(img.device), torch.from_numpy(wx.T).to(img.device)
    if need_h and need_v and vertical_first(width, height, size, size):
        return _fixed_to_u8(_fixed_to_u8(wy_t @ out) @ wx_t).to(torch.float32)
    if need_h:
        out = _fixed_to_u8(out @ wx_t)
    if need_v:
        out = _fixed_to_u8(wy_t @ out)
    return out.to(torch.float32)


def blend(degenerate: torch.Tensor | float, img: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL's ``Image.blend(degenerate, img, factor)``: float32 ``d + f * (i - d)``, clipped, truncated."""
    return torch.floor((degenerate + float(np.float32(factor)) * (img - degenerate)).clamp_(0.0, 255.0))


def luma(img: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L: ``(19595 R + 38470 G + 7471 B + 2**15) >> 16`` (exact in float32), ``[1, H, W]``."""
    r, g, b = img[0], img[1], img[2]
    return torch.floor((r * 19595.0 + g * 38470.0 + b * 7471.0 + 32768.0) * (1.0 / 65536.0)).unsqueeze(0)


def adjust_contrast(img: torch.Tensor, factor: float) -> torch.Tensor:
    """ImageEnhance.Contrast: blend with the rounded mean of the luma."""
    mean = torch.floor(luma(img).double().mean() + 0.5).float()
    return blend(mean, img, factor)


def adjust_hue(img: torch.Tensor, factor: float) -> torch.Tensor:
    """:func:`~bigseer.data.multicrop.adjust_hue_uint8` on float ``[3, H, W]``: same float32 formula."""
    r, g, b = img[0], img[1], img[2]
    maxc = torch.maximum(torch.maximum(r, g), b)
    c = maxc - torch.minimum(torch.minimum(r, g), b)
    inv = 1.0 / c.clamp(min=1.0)
    h = (r - g) * inv + 4.0
    h = torch.where(maxc == g, (b - r) * inv + 2.0, h)
    h = torch.where(maxc == r, (g - b) * inv, h)
    h = h + float(np.float32(6.0 * (factor % 1.0) + 6.0))
    k = h.unsqueeze(0) + torch.tensor(_HUE_OFFSETS, dtype=img.dtype, device=img.device).view(3, 1, 1)
    k = k - torch.floor(k * float(np.float32(1.0 / 6.0))) * 6.0
    k = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return torch.floor(maxc - k * c + 0.5)


def _box_pass(x: torch.Tensor, radius: float) -> torch.Tensor:
    """One ``ImagingHorizontalBoxBlur`` pass along the last axis of an int64 tensor (edges extended)."""
    r, ww, fw = box_weights(radius)
    n = x.shape[-1]
    idx = torch.arange(-r - 1, n + r + 1, device=x.device).clamp_(0, n - 1)
    xp = x[..., idx]
    cs = torch.nn.functional.pad(torch.cumsum(xp, -1), (1, 0))
    acc = cs[..., 2 * r + 2:2 * r + 2 + n] - cs[..., 1:1 + n]
    far = xp[..., :n] + xp[..., 2 * r + 2:2 * r + 2 + n]
    return (acc * ww + far * fw + (1 << 23)) >> 24


def gaussian_blur(img: torch.Tensor, radius: float, passes: int = 3) -> torch.Tensor:
    """PIL's ``GaussianBlur(radius)`` on uint8-valued float ``[C, H, W]``: ``passes`` extended box
    passes along x, then along y, each rounded to uint8 (integer arithmetic, as PIL)."""
    box = pil_box_radius(radius, passes)
    x = img.to(torch.int64)
    for _ in range(passes):
        x = _box_pass(x, box)
    x = x.transpose(-2, -1)
    for _ in range(passes):
        x = _box_pass(x, box)
    return x.transpose(-2, -1).to(img.dtype)


def _jitter(out: torch.Tensor, jitter: tuple) -> torch.Tensor:
    order, bright, contrast, sat, hue = jitter
    for op in order:
        if op == 0:
            out = blend(0.0, out, bright)
        elif op == 1:
            out = adjust_contrast(out, contrast)
        elif op == 2:
            out = blend(luma(out), out, sat)
        elif abs(hue) >= 1e-9:
            out = adjust_hue(out, hue)
    return out


def render_crop_tensor(img: torch.Tensor, scale_xy: tuple[float, float], plan: CropPlan) -> torch.Tensor:
    """:func:`~bigseer.data.multicrop.render_crop` for a uint8 ``[3, H, W]`` tensor on any device;
    returns uint8 ``[S, S, 3]`` on the same device."""
    box = crop_box(img.shape[-1], img.shape[-2], scale_xy, plan)
    x0, y0, x1, y1 = enclosing_box(box, img.shape[-1], img.shape[-2])  # cut, then resize: render_crop's arrays
    out = resize_box(img[:, y0:y1, x0:x1], (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0), plan.size)
    if plan.flip:
        out = out.flip(-1)
    jitter = plan.extra.get("jitter")
    if jitter is not None:
        out = _jitter(out, jitter)
    if plan.extra.get("gray"):
        out = luma(out)
    radius = plan.extra.get("blur")
    if radius is not None:
        out = gaussian_blur(out, radius)
    return out.to(torch.uint8).expand(3, -1, -1).permute(1, 2, 0)
