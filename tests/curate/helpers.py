"""Shared inputs for the curation tests: a tiny random trunk, image folders, planted duplicates."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from tests.data.zoo import noise_image


def write_weights(path: str | os.PathLike[str], seed: int = 0) -> str:
    """A regnety_tiny trunk at seeded random init, saved as timm-layout safetensors."""
    import torch
    from safetensors.torch import save_file

    from bigseer.models.regnet import build_regnet

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        trunk = build_regnet("regnety_tiny", zero_init_last=False)
    save_file(trunk.state_dict(), str(path))
    return str(path)


def distinct_image(i: int, side: int = 64) -> Image.Image:
    """Image ``i``: smooth random colours at its own scale (distinct images look unrelated)."""
    rng = np.random.default_rng([7, i])
    cells = int(rng.integers(2, 6))
    small = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC)


def jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def near_copies(img: Image.Image) -> dict[str, bytes]:
    """The planted near-duplicate kinds: half-size, JPEG q=60, 90% centre crop."""
    w, h = img.size
    half = img.resize((w // 2, h // 2), Image.Resampling.BILINEAR)
    dx, dy = int(w * 0.05), int(h * 0.05)
    out = io.BytesIO()
    half.save(out, format="PNG")
    crop = io.BytesIO()
    img.crop((dx, dy, w - dx, h - dy)).save(crop, format="PNG")
    return {"resized.png": out.getvalue(), "q60.jpg": jpeg(img, 60), "crop.png": crop.getvalue()}


def write_folder(folder: str | os.PathLike[str], count: int, start: int = 0) -> list[str]:
    """``count`` distinct PNGs ``folder/i.png``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        p = folder / f"{i:05d}.png"
        distinct_image(i).save(p)
        paths.append(str(p))
    return paths


__all__ = ["distinct_image", "near_copies", "noise_image", "write_folder", "write_weights"]
