"""The ``builtin`` source: procedurally drawn images so demos and tests run offline.

Image ``i`` is a pure function of ``i``: one of :data:`NUM_CLASSES` scene classes (``i % 10``)
fixes the background texture, the shape kind and the colour family; size (64-256 px per side),
positions, counts and exact colours vary per image. The classes give SwAV something to cluster
and a label for kNN / linear sanity checks (:func:`builtin_label`).
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DEFAULT_COUNT = 512
NUM_CLASSES = 10
_SHAPES = ("ellipse", "rectangle", "triangle", "star", "lines")
_TEXTURES = ("gradient", "stripes", "checker", "noise", "rings")


def builtin_label(index: int) -> int:
    """Scene class of builtin image ``index``."""
    return index % NUM_CLASSES


def _colour(rng: np.random.Generator, hue: float, spread: float = 0.06) -> tuple[int, int, int]:
    h = (hue + rng.uniform(-spread, spread)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(0.55, 1.0), rng.uniform(0.5, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _background(kind: str, w: int, h: int, c0: tuple, c1: tuple, rng: np.random.Generator) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(6, 24)
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    if kind == "gradient":
        t = (u - u.min()) / max(float(np.ptp(u)), 1.0)
    elif kind == "stripes":
        t = (np.sin(u * 2 * np.pi / period) > 0).astype(np.float32)
    elif kind == "checker":
        t = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
    elif kind == "noise":
        small = rng.random((max(2, h // 8), max(2, w // 8))).astype(np.float32)
        t = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC),
                       dtype=np.float32) / 255.0
    else:  # rings
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = (np.sin(np.hypot(xx - cx, yy - cy) * 2 * np.pi / period) + 1) / 2
    a, b = np.array(c0, np.float32), np.array(c1, np.float32)
    img = a * (1 - t[..., None]) + b * t[..., None]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def builtin_image(index: int, seed: int = 0) -> Image.Image:
    """Deterministic RGB image number ``index`` (64-256 px per side)."""
    label = builtin_label(index)
    rng = np.random.default_rng([seed, 0xB117, index])
    w, h = (int(v) for v in rng.integers(64, 257, size=2))
    hue = label / NUM_CLASSES
    texture = _TEXTURES[label % len(_TEXTURES)]
    shape = _SHAPES[(label * 3) % len(_SHAPES)]
    img = _background(texture, w, h, _colour(rng, hue), _colour(rng, hue + 0.12), rng)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 5))):
        size = rng.uniform(0.2, 0.5) * min(w, h)
        cx, cy = rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2)
        fill = _colour(rng, hue + 0.5)
        box = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
        if shape == "ellipse":
            draw.ellipse(box, fill=fill)
        elif shape == "rectangle":
            draw.rectangle(box, fill=fill)
        elif shape == "triangle":
            draw.regular_polygon((cx, cy, size / 2), 3, rotation=float(rng.uniform(0, 120)), fill=fill)
        elif shape == "star":
            pts = []
            rot = rng.uniform(0, np.pi)
            for k in range(10):
                r = size / 2 if k % 2 == 0 else size / 5
                pts.append((cx + r * np.cos(rot + k * np.pi / 5), cy + r * np.sin(rot + k * np.pi / 5)))
            draw.polygon(pts, fill=fill)
        else:
            for _ in range(4):
                x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
                draw.line((x0, y0, x0 + rng.uniform(-size, size), y0 + rng.uniform(-size, size)),
                          fill=fill, width=int(rng.integers(2, 6)))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 1.5))))
    return img
