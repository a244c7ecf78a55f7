"""Robust, reduced-size image decoding for uncurated data.

Every failure becomes a :class:`SkipImage` with one of :data:`SKIP_REASONS`; nothing else
escapes for bad input. The image size is checked from the header before any pixel is decoded
(decompression bombs), the EXIF orientation is read from the header, and JPEGs are decoded with
``draft()`` at the smallest DCT scale (1/2, 1/4, 1/8) that still gives every planned crop at
least its output resolution.
"""

from __future__ import annotations

import io
import math
import warnings
from typing import BinaryIO, Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from bigseer.data.multicrop import needed_scale

SKIP_REASONS = ("unreadable", "empty", "not_image", "too_large", "too_small", "truncated", "corrupt")

# PIL's own default for Image.MAX_IMAGE_PIXELS (about 89.5 MP); used when it is set to None.
_PIL_DEFAULT_MAX_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)

_TRANSPOSE = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}


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


def _classify_load_error(exc: BaseException) -> str:
    text = str(exc).lower()
    if "truncated" in text or "broken data stream" in text or "premature end" in text:
        return "truncated"
    return "corrupt"


def decode_for_crops(fp: BinaryIO, plan: Callable[[int, int], list], *, max_pixels: int | None = None,
                     min_side: int = 1, reduce: bool = True) -> tuple[Image.Image, tuple[float, float], list]:
    """Open ``fp``, draw the crop plan on the full oriented size, decode at reduced size.

    ``plan(width, height)`` returns crop plans (objects with ``box`` and ``size``). Returns the
    oriented RGB image, its scale ``(sx, sy)`` relative to the full oriented size, and the plans.
    Raises SkipImage for any input that cannot be used.
    """
    limit = default_max_pixels() if max_pixels is None else int(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise SkipImage("too_large", str(exc)) from None
    except UnidentifiedImageError:
        raise SkipImage("not_image") from None
    except Exception as exc:  # PIL raises many types for garbage headers
        raise SkipImage("corrupt", f"{type(exc).__name__}: {exc}") from None
    width, height = img.size
    if width * height > limit:
        raise SkipImage("too_large", f"{width}x{height} pixels > {limit}")
    if width < 1 or height < 1:
        raise SkipImage("corrupt", f"size {width}x{height}")
    orientation = exif_orientation(img)
    ow, oh = (height, width) if orientation >= 5 else (width, height)
    if min(ow, oh) < min_side:
        raise SkipImage("too_small", f"{ow}x{oh} < {min_side} px")
    plans = plan(ow, oh)
    scale = needed_scale(plans)
    try:
        if reduce and scale < 0.5 and img.format == "JPEG":
            img.draft(None, (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))))
        img.load()
        rgb = to_rgb(img)
    except Image.DecompressionBombError as exc:
        raise SkipImage("too_large", str(exc)) from None
    except MemoryError:
        raise SkipImage("too_large", "out of memory while decoding") from None
    except Exception as exc:
        raise SkipImage(_classify_load_error(exc), f"{type(exc).__name__}: {exc}") from None
    for op in _TRANSPOSE.get(orientation, ()):
        rgb = rgb.transpose(op)
    return rgb, (rgb.width / ow, rgb.height / oh), plans


def decode_bytes(data: bytes, plan: Callable[[int, int], list],
                 **kwargs) -> tuple[Image.Image, tuple[float, float], list]:
    """:func:`decode_for_crops` on an in-memory encoded image (e.g. a tar member)."""
    if len(data) == 0:
        raise SkipImage("empty")
    return decode_for_crops(io.BytesIO(data), plan, **kwargs)

