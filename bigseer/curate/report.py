"""The PNGs of the curation reports: duplicate groups and cluster examples (PIL grids), cluster sizes (matplotlib)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bigseer.atomic import write_with
from bigseer.curate.items import example_image


def image_grid(path: str | os.PathLike[str], source: str, rows: Sequence[tuple[str, Sequence[str]]], cols: int = 8,
               side: int = 80) -> Path:
    """One row of ``side`` px thumbnails per ``(title, origins)``, the title above it (drawn with PIL: a grid of
    dozens of images in matplotlib subplots takes seconds)."""
    from PIL import Image, ImageDraw

    title_h, pad = 14, 4
    rows = list(rows) or [("(nothing to show)", [])]
    canvas = Image.new("RGB", (cols * (side + pad) + pad, len(rows) * (side + title_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (title, origins) in enumerate(rows):
        y = pad + r * (side + title_h + pad)
        draw.text((pad, y), title, fill="black")
        for c, origin in enumerate(list(origins)[:cols]):
            thumb = example_image(source, origin, side)
            canvas.paste(thumb, (pad + c * (side + pad), y + title_h))
    return write_with(path, lambda tmp: canvas.save(tmp, format="PNG"))


def group_grid(path: str | os.PathLike[str], store: Any, groups: Sequence[np.ndarray], kinds: Sequence[str]) -> Path:
    """Duplicate groups, one per row, the kept image first."""
    rows = [(f"{kind} group of {len(g)} (first kept)", [store.paths[int(i)] for i in g])
            for g, kind in zip(groups, kinds)]
    return image_grid(path, store.manifest["source"], rows or [("no duplicates", [])], cols=6)


def cluster_sizes_png(path: str | os.PathLike[str], before: np.ndarray, after: np.ndarray) -> Path:
    """Level-1 cluster sizes, largest first, before and after curation (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    order = np.argsort(-before, kind="stable")
    ax.plot(np.arange(len(before)), before[order], label=f"before ({int(before.sum())} images)")
    ax.plot(np.arange(len(after)), after[order], label=f"after ({int(after.sum())} images)")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel("level-1 cluster (by size before)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.12, bottom=0.16, right=0.98, top=0.96)
    out = write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    plt.close(fig)
    return out


def embed_png(path: str | os.PathLike[str], sizes: np.ndarray, skipped: dict[str, int]) -> Path:
    """Short sides of the embedded images (histogram) and the skipped images by reason."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7, 2.8))
    ax1.hist(sizes.min(axis=1), bins=30)
    ax1.set_xlabel("short side (px)")
    ax1.set_ylabel(f"embedded images ({len(sizes)})")
    reasons = list(skipped) or ["none"]
    ax2.barh(reasons, [skipped.get(r, 0) for r in reasons])
    ax2.set_xlabel(f"skipped images ({sum(skipped.values())})")
    fig.subplots_adjust(left=0.1, bottom=0.18, right=0.98, top=0.95, wspace=0.45)
    out = write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    plt.close(fig)
    return out
