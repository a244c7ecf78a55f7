"""Deterministic photo-like test images of the kinds users' data holds, for benchmarks/bench_loaders.py.

Kinds (``KINDS``): baseline / progressive JPEG, 4:2:0 / 4:4:4 chroma, grayscale, CMYK, EXIF-rotated
(orientation 6: stored landscape, shown portrait), portrait, PNG and WebP. Two sizes: ``web`` (sides drawn
from ~500 to ~1,300 px, mixed aspect ratios as scraped web images have) and ``camera`` (12 MP, 4000x3000).
Content: smooth scene + edges + fine detail + sensor noise (not flat colour), deterministic by seed.

    .venv/bin/python benchmarks/image_kinds.py /tmp/bigseer-kinds --size web --count 24
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

WEB_SIZES = ((500, 375), (640, 480), (800, 600), (1024, 768), (1280, 960), (1200, 800), (1300, 866), (960, 720))
CAMERA_SIZE = (4000, 3000)


@dataclass(frozen=True)
class Kind:
    name: str
    ext: str
    save: dict          # PIL save keywords
    mode: str = "RGB"
    portrait: bool = False
    exif_rotate: bool = False


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("jpeg-420", "jpg", {"quality": 90, "subsampling": 2}),
    Kind("jpeg-progressive", "jpg", {"quality": 90, "subsampling": 2, "progressive": True}),
    Kind("jpeg-444", "jpg", {"quality": 90, "subsampling": 0}),
    Kind("jpeg-gray", "jpg", {"quality": 90}, mode="L"),
    Kind("jpeg-cmyk", "jpg", {"quality": 90}, mode="CMYK"),
    Kind("jpeg-exif-rotated", "jpg", {"quality": 90, "subsampling": 2}, exif_rotate=True),
    Kind("jpeg-portrait", "jpg", {"quality": 90, "subsampling": 2}, portrait=True),
    Kind("png", "png", {"compress_level": 6}),
    Kind("webp", "webp", {"quality": 85, "method": 4}),
)}


def photo(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """HxWx3 uint8 photo-like content: smooth colour field, a few hard edges, texture, sensor noise."""
    w, h = size
    small = rng.integers(0, 256, (max(h // 120, 2), max(w // 120, 2), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((max(w // 4, 1), max(h // 4, 1)), Image.Resampling.BICUBIC)
    detail = Image.fromarray(rng.integers(0, 256, (max(h // 4, 1), max(w // 4, 1), 3), dtype=np.uint8))
    img = Image.blend(img, detail, 0.12).resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.int16).copy()
    for _ in range(3):  # edges: a few rectangles of shifted colour
        x0, y0 = int(rng.integers(0, w - 1)), int(rng.integers(0, h - 1))
        x1, y1 = int(rng.integers(x0 + 1, w + 1)), int(rng.integers(y0 + 1, h + 1))
        arr[y0:y1, x0:x1] += rng.integers(-60, 61, 3, dtype=np.int16)
    arr += rng.integers(-5, 6, (h, w, 1), dtype=np.int16)
    return np.clip(arr, 0, 255).astype(np.uint8)


def encode(kind: Kind, size: tuple[int, int], rng: np.random.Generator, path: str) -> None:
    """Write one image of ``kind``; ``size`` is (w, h) as displayed (after any EXIF rotation)."""
    w, h = size
    if kind.portrait:
        w, h = h, w
    stored = (h, w) if kind.exif_rotate else (w, h)  # orientation 6 shows the stored image turned 90 cw
    img = Image.fromarray(photo(stored, rng)).convert(kind.mode)
    kw = dict(kind.save)
    if kind.exif_rotate:
        exif = Image.Exif()
        exif[0x0112] = 6
        kw["exif"] = exif
    img.save(path, **kw)


def make(root: str, kind: str, size: str, count: int) -> str:
    """``root/<size>/<kind>/images/*.ext`` (ImageFolder layout), written once; returns the folder above images/."""
    k = KINDS[kind]
    top = os.path.join(root, size, kind)
    folder = os.path.join(top, "images")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng([list(KINDS).index(kind), 0 if size == "web" else 1])
    for i in range(count):
        dims = CAMERA_SIZE if size == "camera" else WEB_SIZES[int(rng.integers(0, len(WEB_SIZES)))]
        path = os.path.join(folder, f"img_{i:04d}.{k.ext}")
        item_rng = np.random.default_rng([list(KINDS).index(kind), i, 7])
        if not os.path.exists(path):
            tmp = path + ".tmp." + k.ext
            encode(k, dims, item_rng, tmp)
            os.replace(tmp, path)
    return top


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--size", choices=("web", "camera"), default="web")
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--kinds", default=",".join(KINDS))
    args = parser.parse_args()
    for kind in args.kinds.split(","):
        print(make(args.root, kind, args.size, args.count))


if __name__ == "__main__":
    main()
