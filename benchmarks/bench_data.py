"""Data pipeline throughput: bigseer MultiCropStream vs torchvision ImageFolder + transforms.v2.

Both run the full SwAV 6-crop augmentation (2x224 @ (0.14, 1) + 4x96 @ (0.05, 0.14), flip,
ColorJitter(0.8, 0.8, 0.8, 0.2) p 0.8, grayscale p 0.2, Gaussian blur p 0.5, normalise) on a
folder of generated 12 MP (4000x3000) camera-like JPEGs, in this process (one worker, one torch
thread), alternating ours / baseline ``--repeats`` times. Prints images/s per worker and the ratio.

    .venv/bin/python benchmarks/bench_data.py [--images 24] [--repeats 2] [--dir /tmp/bigseer-bench-12mp]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from PIL import Image


def make_jpegs(root: str, count: int, size: tuple[int, int] = (4000, 3000)) -> str:
    """Write ``count`` camera-like 12 MP JPEGs (smooth scene + sensor noise, quality 90)."""
    folder = os.path.join(root, "images")  # ImageFolder needs one class sub-folder
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h = size
    for i in range(count):
        path = os.path.join(folder, f"img_{i:04d}.jpg")
        if os.path.exists(path):
            continue
        small = rng.integers(0, 256, (h // 100, w // 100, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w // 4, h // 4), Image.Resampling.BICUBIC)
        detail = rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)
        img = Image.blend(img, Image.fromarray(detail), 0.15).resize((w, h), Image.Resampling.BILINEAR)
        noise = rng.integers(-6, 7, (h, w, 1), dtype=np.int16)
        arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(path, quality=90)
    return root


def baseline_loader(root: str, batch: int):
    """torchvision ImageFolder + transforms.v2, SwAV multi-crop (one Compose per crop)."""
    from torchvision import datasets
    from torchvision.transforms import v2  # imported (and timed) outside the measured loop

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def crop(size: int, scale: tuple[float, float], kernel: int):
        return v2.Compose([
            v2.RandomResizedCrop(size, scale=scale, antialias=True),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5),
            v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std),
        ])

    crops = [crop(224, (0.14, 1.0), 23)] * 2 + [crop(96, (0.05, 0.14), 9)] * 4

    def multi(img):
        return [t(img) for t in crops]

    ds = datasets.ImageFolder(root, transform=multi)
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=0)


def time_baseline(root: str, n: int, batch: int) -> float:
    loader = baseline_loader(root, batch)
    t0 = time.perf_counter()
    seen = 0
    for views, _ in loader:
        assert views[0].shape[-1] == 224 and views[2].shape[-1] == 96
        seen += views[0].shape[0]
        if seen >= n:
            break
    return seen / (time.perf_counter() - t0)


def time_ours(root: str, n: int, batch: int, seed: int, reduced: bool = True) -> float:
    from bigseer.data import MultiCropStream

    stream = MultiCropStream(root, "2x224+4x96", batch, seed=seed, num_workers=0, reduced_decode=reduced)
    t0 = time.perf_counter()
    seen = 0
    for b in stream:
        assert b.crops[0].shape == (2, batch, 3, 224, 224) and b.crops[1].shape == (4, batch, 3, 96, 96)
        seen += batch
        if seen >= n:
            break
    return seen / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", default="/tmp/bigseer-bench-12mp")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    make_jpegs(args.dir, args.images)
    files = os.listdir(os.path.join(args.dir, "images"))
    mb = statistics.mean(os.path.getsize(os.path.join(args.dir, "images", f)) for f in files) / 1e6
    print(f"data: {len(files)} JPEGs 4000x3000 (mean {mb:.1f} MB) in {args.dir} "
          f"(prepared in {time.perf_counter() - t0:.1f} s); load avg {os.getloadavg()}")
    ours, base, full = [], [], []
    for r in range(args.repeats):
        base.append(time_baseline(args.dir, args.images, args.batch))
        ours.append(time_ours(args.dir, args.images, args.batch, seed=r))
        full.append(time_ours(args.dir, args.images, args.batch, seed=r, reduced=False))
        print(f"  repeat {r}: torchvision {base[-1]:.2f} img/s, bigseer {ours[-1]:.2f} img/s, "
              f"bigseer without draft decoding {full[-1]:.2f} img/s", flush=True)
    b, o, f = max(base), max(ours), max(full)
    print()
    print("| pipeline (6 crops: 2x224 + 4x96, 1 worker, 1 thread) | images/s (best of %d) |" % args.repeats)
    print("|---|---|")
    print(f"| torchvision ImageFolder + transforms.v2 | {b:.2f} |")
    print(f"| bigseer MultiCropStream, reduced_decode=False (ablation) | {f:.2f} |")
    print(f"| bigseer MultiCropStream | {o:.2f} |")
    print(f"| ratio bigseer / torchvision | {o / b:.2f}x |")
    print(f"load avg after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
