"""The loaders bigseer is measured against in benchmarks/bench_loaders.py: DALI's CPU pipelines (optional: skipped
with one line when ``nvidia.dali`` does not import) and the decode-only limits of bigseer and torchvision."""

from __future__ import annotations

import io
import os
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_data import _rng  # noqa: E402

MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]


# ---------------------------------------------------------------- DALI (optional)

def dali_available() -> str:
    """'' when nvidia.dali imports, else the one-line reason it is skipped."""
    try:
        import nvidia.dali  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means: skip DALI
        return f"DALI skipped: nvidia.dali does not import ({type(exc).__name__}: {exc})"
    return ""


class Dali:
    """One DALI CPU pipeline fed encoded bytes per batch (external_source), so batches interleave with the
    other variants on the same images. ``mode``: "once", "roi", "decode" (module docstring)."""

    def __init__(self, mode: str, batch: int, threads: int = 1, files: list[str] | None = None, seed: int = 0):
        from nvidia.dali import fn, pipeline_def, types

        def twist(x):
            return fn.color_twist(x, brightness=fn.random.uniform(range=[0.2, 1.8]),
                                  contrast=fn.random.uniform(range=[0.2, 1.8]),
                                  saturation=fn.random.uniform(range=[0.2, 1.8]),
                                  hue=fn.random.uniform(range=[-72.0, 72.0]))  # SwAV hue 0.2 turn = 72 deg

        def finish(x):
            return fn.crop_mirror_normalize(x, mirror=fn.random.coin_flip(), mean=MEAN, std=STD,
                                            output_layout="CHW", dtype=types.FLOAT)

        crops = [(224, (0.14, 1.0))] * 2 + [(96, (0.05, 0.14))] * 4

        @pipeline_def(batch_size=batch, num_threads=threads, device_id=None, seed=seed,
                      prefetch_queue_depth=1 if files is None else 2)
        def pipe():
            if files is None:
                enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
            else:
                enc, _ = fn.readers.file(files=files, random_shuffle=True, name="reader")
            if mode == "decode":
                return fn.decoders.image(enc, device="cpu", output_type=types.RGB)
            outs = []
            if mode == "once":
                img = fn.decoders.image(enc, device="cpu", output_type=types.RGB)
                for size, scale in crops:
                    outs.append(finish(twist(fn.random_resized_crop(img, size=[size, size], random_area=list(scale),
                                                                    random_aspect_ratio=[0.75, 4 / 3],
                                                                    antialias=True))))
            else:
                for size, scale in crops:
                    x = fn.decoders.image_random_crop(enc, device="cpu", output_type=types.RGB,
                                                      random_area=list(scale), random_aspect_ratio=[0.75, 4 / 3])
                    outs.append(finish(twist(fn.resize(x, size=[size, size], antialias=True))))
            return tuple(outs)

        self.mode, self.files = mode, files
        self.pipe = pipe()
        self.pipe.build()

    def time(self, paths: list[str]) -> float:
        """Seconds to read ``paths`` and run one batch of them."""
        t0 = time.perf_counter()
        self.pipe.feed_input("enc", [np.fromfile(p, dtype=np.uint8) for p in paths])
        outs = self.pipe.run()
        elapsed = time.perf_counter() - t0
        assert len(outs[0]) == len(paths)
        return elapsed


# ---------------------------------------------------------------- per-core variants

def time_bigseer_decode(renderer, paths: list[str], items: range, seed: int) -> float:
    """bigseer's decode limit for ``items``: read, header, the same crop plans, decode_pixels at their scale."""
    from bigseer.data.decode import JPEG_FORMATS, decode_pixels, exif_orientation
    from bigseer.data.multicrop import needed_scale, plan_crops

    t0 = time.perf_counter()
    for item in items:
        with open(paths[item], "rb") as f:
            data = f.read()
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if exif_orientation(img) >= 5:
            w, h = h, w
        plans = plan_crops(w, h, renderer.groups, renderer.aug, _rng(seed, item))
        decode_pixels(img, data if img.format in JPEG_FORMATS else None, needed_scale(plans), True)
    return time.perf_counter() - t0


def time_tv_decode(paths: list[str], items: range) -> float:
    from torchvision.datasets.folder import default_loader

    t0 = time.perf_counter()
    for item in items:
        default_loader(paths[item]).load()
    return time.perf_counter() - t0
