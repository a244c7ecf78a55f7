"""Per-stage profile of bigseer's loader (ms per image), for benchmarks/bench_loaders.py --profile."""

from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_data import _rng, make_renderer, time_bigseer  # noqa: E402


def profile(root: str, repeats: int) -> dict[str, float]:
    """ms per image of bigseer's stages, measured by calling the library with plans reduced to one op:
    decode (catalog.load: read, header, plans, decode, orientation; PIL-decoded images as the renderer's RGBX
    copy), resize+flip (render_crop with no colour op), each op's extra cost (render_crop with only that op,
    minus resize), the normalised write into the batch (render_crop_into minus render_crop), whole batches."""
    import numpy as np
    from PIL import Image

    from bigseer.data import multicrop, render
    from bigseer.data.multicrop import CropPlan, plan_crops, render_crop

    into = getattr(multicrop, "render_crop_into", None)  # None in a package from before (--before)
    rgbx_array = getattr(render, "rgbx_array", None)

    torch.set_num_threads(1)
    renderer = make_renderer(root, True)
    n = len(renderer.catalog)
    t: dict[str, float] = {}
    out = {g.size: np.empty((3, g.size, g.size), np.float32) for g in renderer.groups}

    def add(k: str, t0: float) -> None:
        t[k] = t.get(k, 0.0) + time.perf_counter() - t0

    for rep in range(repeats + 1):  # the first pass warms up and is dropped
        if rep == 1:
            t.clear()
        for item in range(n):
            rng = _rng(rep, item)
            t0 = time.perf_counter()
            img, scale, plans = renderer.catalog.load(
                item, lambda w, h, rng=rng: plan_crops(w, h, renderer.groups, renderer.aug, rng), **renderer.decode_kw)
            if rgbx_array is not None and isinstance(img, Image.Image):
                img = rgbx_array(img)
            add("decode", t0)
            for p in plans:
                t0 = time.perf_counter()
                render_crop(img, scale, CropPlan(p.box, p.size, p.flip, {}))
                base = time.perf_counter() - t0
                t["resize+flip"] = t.get("resize+flip", 0.0) + base
                if into is not None:
                    t0 = time.perf_counter()
                    into(img, scale, CropPlan(p.box, p.size, p.flip, {}), out[p.size], renderer.norm)
                    t["normalised write"] = t.get("normalised write", 0.0) + max(0.0, time.perf_counter() - t0 - base)
                for key in ("jitter", "gray", "blur"):
                    if p.extra.get(key):
                        t0 = time.perf_counter()
                        render_crop(img, scale, CropPlan(p.box, p.size, p.flip, {key: p.extra[key]}))
                        t[key] = t.get(key, 0.0) + max(0.0, time.perf_counter() - t0 - base)
        for start in range(0, n, 8):
            items = range(start, min(start + 8, n))
            t0 = time.perf_counter()
            time_bigseer(renderer, items, rep)
            add("whole batch (time_bigseer)", t0)
    return {k: 1000 * v / (n * repeats) for k, v in t.items()}
