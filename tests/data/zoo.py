"""Generators for good and bad test images (every bad-input kind the data path must survive)."""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zlib

import numpy as np
from PIL import Image


def noise_image(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Smooth random colours (compressible, not flat)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
    return img.convert(mode) if mode != "RGB" else img


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = 30000) -> bytes:
    """A valid-header PNG claiming side x side 1-bit pixels; only the first rows are present."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    row = b"\0" + b"\0" * ((side + 7) // 8)
    idat = zlib.compress(row * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    """40x20 stored pixels: left half red, right half blue, with an EXIF orientation tag."""
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(img, exif=exif.tobytes())


def sixteen_bit_png() -> bytes:
    """32x32 16-bit greyscale: left half 65535, right half 32896 (-> 255 and 128 in 8 bit)."""
    arr = np.full((32, 32), 32896, dtype=np.uint16)
    arr[:, :16] = 65535
    return png_bytes(Image.fromarray(arr))


def good_kinds() -> dict[str, bytes]:
    """Unusual but valid images, keyed by file name."""
    pal = noise_image(48, 40, 3).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    rgba = noise_image(48, 40, 4).convert("RGBA")
    alpha = np.asarray(rgba).copy()
    alpha[:, :24, 3] = 0  # left half fully transparent -> composited on white
    return {
        "rgb.jpg": jpeg_bytes(noise_image(64, 48, 1)),
        "gray.png": png_bytes(noise_image(48, 40, 2, "L")),
        "palette.gif": _gif(pal),
        "rgba.png": png_bytes(Image.fromarray(alpha, "RGBA")),
        "cmyk.jpg": jpeg_bytes(noise_image(48, 40, 5).convert("CMYK")),
        "gray16.png": sixteen_bit_png(),
        "rotated.jpg": exif_rotated_jpeg(6),
        "png_named.dat": png_bytes(noise_image(40, 40, 6)),
    }


def _gif(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="GIF", transparency=0)
    return buf.getvalue()


def bad_kinds() -> dict[str, tuple[bytes, str]]:
    """Inputs that must be skipped: name -> (content, expected skip reason)."""
    whole = jpeg_bytes(noise_image(160, 120, 7))
    return {
        "truncated.jpg": (whole[: len(whole) // 2], "truncated"),
        "empty.jpg": (b"", "empty"),
        "text.jpg": (b"this is not an image\n" * 10, "not_image"),
        "bomb.png": (bomb_png(), "too_large"),
        "tiny.png": (png_bytes(Image.new("RGB", (1, 1), (9, 9, 9))), "too_small"),
    }


def write_zoo(root: str) -> dict[str, str]:
    """Write every good and bad kind (+ a dangling symlink) under root; name -> expected reason
    ('' for good ones)."""
    os.makedirs(os.path.join(root, "sub"), exist_ok=True)
    expected = {}
    for name, data in good_kinds().items():
        with open(os.path.join(root, "sub" if name.startswith("png") else "", name), "wb") as f:
            f.write(data)
        expected[name] = ""
    for name, (data, reason) in bad_kinds().items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
        expected[name] = reason
    os.symlink(os.path.join(root, "missing-target.jpg"), os.path.join(root, "dangling.jpg"))
    expected["dangling.jpg"] = "unreadable"
    return expected


def write_tar(path: str, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_folder(root: str, count: int, size: tuple[int, int] = (48, 40), fmt: str = "JPEG") -> list[str]:
    os.makedirs(root, exist_ok=True)
    paths = []
    for i in range(count):
        p = os.path.join(root, f"img_{i:03d}.{'jpg' if fmt == 'JPEG' else 'png'}")
        noise_image(*size, seed=100 + i).save(p, format=fmt)
        paths.append(p)
    return paths
