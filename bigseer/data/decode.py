"""Robust, reduced-size image decoding for uncurated data.

Every failure becomes a :class:`SkipImage` with one of :data:`SKIP_REASONS`; nothing else
escapes for bad input. PIL reads the header first (no pixels): the size is checked before any
pixel is decoded (decompression bombs), the EXIF orientation is read, and ``plan(w, h)`` draws
the crop geometry on the full oriented size. Only then are pixels decoded, at the smallest
scale that still gives every planned crop at least its output resolution (``needed_scale``).

Decoders. JPEG (and MPO, whose first frame is a JPEG) goes to simplejpeg: libjpeg-turbo's
DCT-domain scaling by 1/8, 1/4, 3/8 or 1/2 (5/8..7/8 are slower than a full decode there, so
they are not used) straight into a numpy array. simplejpeg rather than PyTurboJPEG: PyTurboJPEG
dlopens a system libturbojpeg (absent from our containers and pip-only machines), simplejpeg's
wheels ship their own libjpeg-turbo. Everything else goes to PIL: other formats, and JPEGs
simplejpeg refuses (CMYK/YCCK, 12-bit, streams with recoverable damage that PIL tolerates, so
skip decisions stay PIL's); PIL JPEGs still use ``draft()`` (1/2, 1/4, 1/8).
``device=`` returns a uint8 ``[3, H, W]`` tensor instead of a PIL image (the tensor path of
:mod:`bigseer.data.tensor_augment`); on CUDA, JPEGs decode full-size with nvjpeg.

Pixel bound against a full-size decode, for every format PIL reads (tests/data/test_decode.py):
non-JPEG formats are decoded by PIL at full size, as before (0 LSB); a JPEG at scale 1 is
libjpeg-turbo in simplejpeg and in PIL alike (<= 1 LSB). A JPEG decoded at a reduced scale is
compared on what the model sees, crops rendered from it vs the same crops from a full-size decode:
mean |diff| <= 2 LSB and 99th percentile <= 8 LSB on photo-like content (smooth scene + sensor
noise), <= 2.5 / <= 20 with sharp synthetic edges. The scaled IDCT and the crop's antialiased
resize are different low-pass filters; they differ only near the decoded Nyquist, which photos
hardly reach. Per-pixel white noise (all energy above it) is outside the bound (mean ~8 LSB).
"""

from __future__ import annotations

import io
import math
import warnings
from typing import BinaryIO, Callable

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from bigseer.data.multicrop import OrientedArray, needed_scale
from bigseer.data.orientation import TRANSPOSE

SKIP_REASONS = ("unreadable", "empty", "not_image", "too_large", "too_small", "truncated", "corrupt", "unreachable")

# PIL's own default for Image.MAX_IMAGE_PIXELS (about 89.5 MP); used when it is set to None.
_PIL_DEFAULT_MAX_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)


JPEG_FORMATS = frozenset({"JPEG", "MPO"})
_TURBO_EIGHTHS = (1, 2, 3, 4)  # libjpeg-turbo scales M/8 that are faster than a full decode
_TURBO_COLORSPACES = frozenset({"YCbCr", "Gray", "RGB"})


class SkipImage(Exception):
    """An input that is skipped (not an error of the run); ``reason`` is one of SKIP_REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def format_skipped(skipped: dict[str, int]) -> str:
    """One log fragment, e.g. ``skipped 3 (truncated 2, not_image 1)``; ``skipped 0`` when none."""
    total = sum(skipped.values())
    if not total:
        return "skipped 0"
    parts = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0])) if v)
    return f"skipped {total} ({parts})"


def default_max_pixels() -> int:
    """PIL's current ``Image.MAX_IMAGE_PIXELS`` (its default when unset)."""
    return int(Image.MAX_IMAGE_PIXELS or _PIL_DEFAULT_MAX_PIXELS)


def exif_orientation(img: Image.Image) -> int:
    """EXIF orientation tag (1..8) from the header; 1 when absent or unreadable."""
    try:
        value = int(img.getexif().get(0x0112, 1))
    except Exception:  # corrupt EXIF must not cost the image
        return 1
    return value if 1 <= value <= 8 else 1


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: 16-bit / 32-bit grey scaled to 8 bit, alpha composited
    on white, palette (with transparency), CMYK, LAB, YCbCr, 1-bit converted by PIL."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img)
        if mode == "F":
            arr = arr.astype(np.float64)
            arr = arr * 255.0 if np.nanmax(arr) <= 1.0 else arr
        elif mode == "I" and arr.max(initial=0) <= 255:
            arr = arr.astype(np.float64)
        else:  # 16-bit range
            arr = arr.astype(np.float64) / 257.0
        grey = np.clip(np.nan_to_num(arr) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode == "RGB":
            return img
    elif mode in ("LA", "La", "PA", "RGBa") or (mode == "L" and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def header_ok(fp: BinaryIO) -> bool:
    """True when ``fp`` opens as an image of positive size (header only, nothing decoded)."""
    try:
        with Image.open(fp) as img:
            return img.size[0] > 0 and img.size[1] > 0
    except Exception:
        return False


def header_ok_bytes(data: bytes) -> bool:
    """True when ``data`` opens as an image (header only)."""
    return header_ok(io.BytesIO(data))


def _classify_load_error(exc: BaseException) -> str:
    text = str(exc).lower()
    if "truncated" in text or "broken data stream" in text or "premature end" in text:
        return "truncated"
    return "corrupt"


def turbo_eighths(scale: float) -> int:
    """Smallest M in :data:`_TURBO_EIGHTHS` with M/8 >= ``scale``; 8 (full size) when none."""
    return next((m for m in _TURBO_EIGHTHS if m / 8 >= scale), 8)


def decode_jpeg_turbo(data: bytes, width: int, height: int, scale: float, rgbx: bool = False) -> np.ndarray | None:
    """libjpeg-turbo decode of a ``width`` x ``height`` JPEG at the smallest fast M/8 scale >= ``scale``.

    Returns HxWx3 uint8 (HxWx4 RGBX with ``rgbx``: 4-byte pixels, which the resize kernels read in place),
    or None when simplejpeg cannot or should not decode it (CMYK/YCCK, a header that disagrees with PIL's, any
    decode error): the caller then uses PIL.
    """
    m = turbo_eighths(scale)
    min_w, min_h = (0, 0) if m == 8 else (math.ceil(width * m / 8), math.ceil(height * m / 8))
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if (w, h) != (width, height) or colorspace not in _TURBO_COLORSPACES:
            return None
        return simplejpeg.decode_jpeg(data, "RGBX" if rgbx else "RGB", min_height=min_h, min_width=min_w)
    except (ValueError, MemoryError, OSError):
        return None


def _open(fp: BinaryIO) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise SkipImage("too_large", str(exc)) from None
    except UnidentifiedImageError:
        raise SkipImage("not_image") from None
    except Exception as exc:  # PIL raises many types for garbage headers
        raise SkipImage("corrupt", f"{type(exc).__name__}: {exc}") from None


def _check_size(img: Image.Image, limit: int, min_side: int) -> tuple[int, int, int]:
    """(orientation, oriented width, oriented height) or SkipImage."""
    width, height = img.size
    if width * height > limit:
        raise SkipImage("too_large", f"{width}x{height} pixels > {limit}")
    if width < 1 or height < 1:
        raise SkipImage("corrupt", f"size {width}x{height}")
    orientation = exif_orientation(img)
    ow, oh = (height, width) if orientation >= 5 else (width, height)
    if min(ow, oh) < min_side:
        raise SkipImage("too_small", f"{ow}x{oh} < {min_side} px")
    return orientation, ow, oh


def _pil_pixels(img: Image.Image, scale: float, reduce: bool) -> Image.Image:
    """PIL decode (JPEG draft at 1/2..1/8 when allowed) to RGB, or SkipImage."""
    width, height = img.size
    try:
        if reduce and scale < 0.5 and img.format in JPEG_FORMATS:
            img.draft(None, (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))))
        img.load()
        return to_rgb(img)
    except Image.DecompressionBombError as exc:
        raise SkipImage("too_large", str(exc)) from None
    except MemoryError:
        raise SkipImage("too_large", "out of memory while decoding") from None
    except Exception as exc:
        raise SkipImage(_classify_load_error(exc), f"{type(exc).__name__}: {exc}") from None


def _encoded(fp: BinaryIO, data: bytes | None) -> bytes | None:
    if data is not None:
        return data
    try:
        fp.seek(0)
        return fp.read()
    except (OSError, ValueError, MemoryError):
        return None  # PIL reads it itself and reports what is wrong


def decode_for_crops(fp: BinaryIO, plan: Callable[[int, int], list], *, max_pixels: int | None = None,
                     min_side: int = 1, reduce: bool = True, device: str | None = None,
                     turbo: bool = True, data: bytes | None = None,
                     arrays: bool = False) -> tuple[object, tuple[float, float], list]:
    """Open ``fp``, draw the crop plan on the full oriented size, decode at reduced size.

    ``plan(width, height)`` returns crop plans (objects with ``box`` and ``size``). Returns the
    oriented image, its scale ``(sx, sy)`` relative to the full oriented size, and the plans.
    The image is an RGB PIL image, or with ``device`` (e.g. ``"cpu"``, ``"cuda"``) a uint8
    ``[3, H, W]`` tensor there. ``turbo=False`` decodes JPEGs with PIL too (the previous decoder,
    for ablations). ``data`` is ``fp``'s content when the caller already holds it. ``arrays=True`` (the CPU
    crop path, :class:`~bigseer.data.render.SampleRenderer`): JPEGs simplejpeg decodes come back as the
    decoder's own HxWx4 RGBX uint8 array (no HxWx3 -> PIL copy; X is padding), wrapped in a
    :class:`~bigseer.data.multicrop.OrientedArray` when EXIF-rotated (upright crop by crop); other images
    as before.
    Raises SkipImage for any input that cannot be used.
    """
    limit = default_max_pixels() if max_pixels is None else int(max_pixels)
    img = _open(fp)
    orientation, ow, oh = _check_size(img, limit, min_side)
    plans = plan(ow, oh)
    scale = needed_scale(plans) if reduce else 1.0
    jpeg = turbo and img.format in JPEG_FORMATS
    if device is not None:
        from bigseer.data.tensor_augment import decode_to_device

        encoded = _encoded(fp, data) if jpeg else None
        pixels = decode_to_device(img, encoded, orientation, device,
                                  lambda: decode_pixels(img, encoded, scale, reduce))
        return pixels, (pixels.shape[-1] / ow, pixels.shape[-2] / oh), plans
    rgb = decode_pixels(img, _encoded(fp, data) if jpeg else None, scale, reduce, rgbx=arrays)
    if isinstance(rgb, np.ndarray) and arrays:  # upright by the crop (render_crop), not a whole-image copy
        arr = rgb if orientation == 1 else OrientedArray(rgb, orientation)
        return arr, (arr.shape[1] / ow, arr.shape[0] / oh), plans
    if not isinstance(rgb, Image.Image):
        rgb = Image.fromarray(rgb, "RGB")
    for op in TRANSPOSE.get(orientation, ()):
        rgb = rgb.transpose(op)
    return rgb, (rgb.width / ow, rgb.height / oh), plans


def decode_pixels(img: Image.Image, data: bytes | None, scale: float, reduce: bool,
                  rgbx: bool = False) -> np.ndarray | Image.Image:
    """Stored-orientation RGB pixels of an opened image: simplejpeg (HxWx3 uint8, HxWx4 RGBX with
    ``rgbx``) for JPEG ``data`` it handles, else PIL (an RGB image). Raises SkipImage."""
    if data is not None:
        width, height = img.size
        arr = decode_jpeg_turbo(data, width, height, scale if reduce else 1.0, rgbx=rgbx)
        if arr is not None:
            return arr
    return _pil_pixels(img, scale, reduce)


def decode_bytes(data: bytes, plan: Callable[[int, int], list],
                 **kwargs) -> tuple[object, tuple[float, float], list]:
    """:func:`decode_for_crops` on an in-memory encoded image (e.g. a tar member)."""
    if len(data) == 0:
        raise SkipImage("empty")
    return decode_for_crops(io.BytesIO(data), plan, data=data, **kwargs)
