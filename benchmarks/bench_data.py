"""Data pipeline throughput on 12 MP JPEGs: bigseer vs torchvision, and vs bigseer's own decode limit.

Every variant runs the full SwAV 6-crop augmentation (2x224 @ (0.14, 1) + 4x96 @ (0.05, 0.14), flip,
ColorJitter(0.8, 0.8, 0.8, 0.2) p 0.8, grayscale p 0.2, Gaussian blur p 0.5, normalise) on the same
folder of generated 4000x3000 camera-like JPEGs, in this process (one core, one torch thread):

  torchvision   ImageFolder + one transforms.v2.Compose per crop + DataLoader (the named baseline)
  bigseer-pil   bigseer's pipeline with PIL decoding the JPEGs (draft 1/2..1/8: the previous decoder)
  bigseer       bigseer's pipeline: simplejpeg DCT-scaled decode, uint8 augmentations, batch buffers
                and normalisation as MultiCropStream builds them (SampleRenderer.new_batch/fill/finish)
  decode-only   read + simplejpeg decode of the same images at the scales bigseer decodes them in
                that repeat (same plans): the limit the pipeline is measured against

The variants are interleaved batch by batch (every batch of images runs under each variant back to
back, order rotated per batch); ratios are formed inside each repeat and the table quotes their
median (and range), never best-of-each-side.

    .venv/bin/python benchmarks/bench_data.py [--images 24] [--batch 2] [--repeats 5] [--out benchmarks/results/data.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import uptime  # noqa: E402  (benchmarks/report.py)

GROUPS = "2x224+4x96"
VARIANTS = ("torchvision", "bigseer-pil", "bigseer", "decode-only")
LABELS = {
    "torchvision": "torchvision ImageFolder + transforms.v2",
    "bigseer-pil": "bigseer, JPEGs decoded by PIL (draft)",
    "bigseer": "bigseer (simplejpeg + uint8 augmentations)",
    "decode-only": "decode-only limit (simplejpeg at bigseer's scales)",
}


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
        write_camera_jpeg(path, size, rng)
    return root


def write_camera_jpeg(path: str, size: tuple[int, int], rng: np.random.Generator) -> None:
    """One camera-like JPEG of ``size`` (w, h): a smooth scene, fine detail and sensor noise, quality 90."""
    w, h = size
    small = rng.integers(0, 256, (max(h // 100, 2), max(w // 100, 2), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w // 4, h // 4), Image.Resampling.BICUBIC)
    detail = rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)
    img = Image.blend(img, Image.fromarray(detail), 0.15).resize((w, h), Image.Resampling.BILINEAR)
    noise = rng.integers(-6, 7, (h, w, 1), dtype=np.int16)
    arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, quality=90)


def swav_v2_crop(size: int, scale: tuple[float, float]):
    """One SwAV crop as a torchvision user writes it with transforms.v2: random resized crop, flip, colour
    jitter, grayscale, Gaussian blur (odd kernel of ~10% of the crop), ImageNet normalisation."""
    from torchvision.transforms import v2

    kernel = int(0.1 * size) // 2 * 2 + 1
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=scale, antialias=True),
        v2.RandomHorizontalFlip(0.5),
        v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5),
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])


def baseline_dataset(root: str):
    """torchvision ImageFolder + transforms.v2, SwAV multi-crop (one Compose per crop)."""
    from torchvision import datasets  # imported (and timed) outside the measured loop

    crops = [swav_v2_crop(224, (0.14, 1.0))] * 2 + [swav_v2_crop(96, (0.05, 0.14))] * 4

    def multi(img):
        return [t(img) for t in crops]

    return datasets.ImageFolder(root, transform=multi)


def time_torchvision(dataset, items: range, seed: int) -> float:
    """Seconds for one DataLoader batch (shuffled) of ``items``; the loader is built untimed."""
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, items), batch_size=len(items),
                                         shuffle=True, num_workers=0)
    t0 = time.perf_counter()
    views, _ = next(iter(loader))
    elapsed = time.perf_counter() - t0
    assert views[0].shape == (len(items), 3, 224, 224) and views[2].shape[-1] == 96
    return elapsed


def _rng(seed: int, item: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0xBE7C, item])


def make_renderer(root: str, turbo: bool):
    from bigseer.data import AugmentConfig, open_source, parse_crops
    from bigseer.data.render import SampleRenderer

    return SampleRenderer(open_source(root), parse_crops(GROUPS), AugmentConfig(), turbo=turbo)


def time_bigseer(renderer, items: range, seed: int) -> float:
    """Seconds for one batch as MultiCropStream.make_batch builds it: new_batch, fill (render, normalised
    into the batch), finish."""
    t0 = time.perf_counter()
    if hasattr(renderer, "new_batch"):
        batch = renderer.new_batch(len(items))
        for b, item in enumerate(items):
            renderer.fill(batch, b, item, _rng(seed, item))
        crops = renderer.finish(batch)
    else:  # a package from before new_batch (--profile --before): render, place, normalize_uint8
        from bigseer.data.multicrop import normalize_uint8

        buffers = renderer.new_buffers(len(items))
        for b, item in enumerate(items):
            renderer.place(buffers, b, renderer.render(item, _rng(seed, item)))
        crops = [normalize_uint8(buf, renderer.aug) for buf in buffers]
    elapsed = time.perf_counter() - t0
    assert crops[0].shape == (2, len(items), 3, 224, 224) and crops[1].shape == (4, len(items), 3, 96, 96)
    return elapsed


def image_paths(root: str) -> list[str]:
    """The folder's images in catalog order (open_source walks sorted; one sub-folder here)."""
    folder = os.path.join(root, "images")
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if not f.startswith(".")]


def decode_jobs(renderer, paths: list[str], items: range, seed: int) -> list[tuple[str, int, int, float]]:
    """(path, width, height, scale) of the images bigseer decodes for ``items`` (same plans)."""
    from bigseer.data.multicrop import needed_scale, plan_crops

    jobs = []
    for item in items:
        with Image.open(paths[item]) as img:
            w, h = img.size
        plans = plan_crops(w, h, renderer.groups, renderer.aug, _rng(seed, item))
        jobs.append((paths[item], w, h, needed_scale(plans)))
    return jobs


def time_decode(jobs: list[tuple[str, int, int, float]]) -> float:
    from bigseer.data.decode import decode_jpeg_turbo

    t0 = time.perf_counter()
    for path, w, h, scale in jobs:
        with open(path, "rb") as f:
            arr = decode_jpeg_turbo(f.read(), w, h, scale)
        assert arr is not None
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> tuple[dict[str, list[float]], list[float]]:
    """Per repeat, every batch of images is timed under every variant back to back (order rotated
    per batch), so load swings on the shared machine hit all variants alike; img/s per repeat."""
    renderers = {"bigseer": make_renderer(args.dir, True), "bigseer-pil": make_renderer(args.dir, False)}
    dataset = baseline_dataset(args.dir)
    paths = image_paths(args.dir)
    assert len(paths) == len(renderers["bigseer"].catalog) == len(dataset) >= args.images
    warm = range(args.batch)  # imports, page cache, first allocations
    time_torchvision(dataset, warm, 10**6)
    for r in renderers.values():
        time_bigseer(r, warm, 10**6)
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    loads = []
    for rep in range(args.repeats):
        spent = dict.fromkeys(VARIANTS, 0.0)
        for k, start in enumerate(range(0, args.images, args.batch)):
            items = range(start, min(start + args.batch, args.images))
            jobs = decode_jobs(renderers["bigseer"], paths, items, rep)
            shift = (rep + k) % len(VARIANTS)
            for v in VARIANTS[shift:] + VARIANTS[:shift]:
                if v == "torchvision":
                    spent[v] += time_torchvision(dataset, items, rep * 1000 + k)
                elif v == "decode-only":
                    spent[v] += time_decode(jobs)
                else:
                    spent[v] += time_bigseer(renderers[v], items, rep)
        for v in VARIANTS:
            rates[v].append(args.images / spent[v])
        loads.append(os.getloadavg()[0])
        print(f"  repeat {rep}: " + ", ".join(f"{v} {rates[v][-1]:.2f}" for v in VARIANTS) + " img/s; "
              f"load {loads[-1]:.2f}", flush=True)
    return rates, loads


def _ratio_cell(num: list[float], den: list[float], pct: bool = False) -> str:
    ratios = [a / b for a, b in zip(num, den)]
    med, lo, hi = statistics.median(ratios), min(ratios), max(ratios)
    if pct:
        return f"{100 * med:.0f}% ({100 * lo:.0f}-{100 * hi:.0f}%)"
    return f"{med:.2f}x ({lo:.2f}-{hi:.2f})"


def table(rates: dict[str, list[float]]) -> list[str]:
    n = len(rates["bigseer"])
    header = (f"| variant | img/s, median of {n} | vs torchvision, median of per-repeat ratios (range) "
              f"| vs decode-only, same |")
    lines = [header, "|---|---|---|---|"]
    for v in VARIANTS:
        vs_dec = _ratio_cell(rates[v], rates["decode-only"], pct=True) if v != "torchvision" else ""
        lines.append(f"| {LABELS[v]} | {statistics.median(rates[v]):.2f} | "
                     f"{_ratio_cell(rates[v], rates['torchvision'])} | {vs_dec} |")
    return lines


def report(args: argparse.Namespace, rates: dict[str, list[float]], loads: list[float], load: tuple[str, str],
           mb: float) -> str:
    cmd = "    .venv/bin/python benchmarks/bench_data.py " + " ".join(sys.argv[1:])
    per_repeat = ["| repeat | " + " | ".join(VARIANTS) + " | load (1 min) |", "|---" * (len(VARIANTS) + 2) + "|"]
    return "\n".join([
        "## Data pipeline: SwAV 6-crop augmentation on 12 MP JPEGs (issues 4, 10, 15)", "",
        "Command (repo root, 2-core CPU machine shared with other engineers):", "", cmd.rstrip(), "",
        (f"Data: {args.images} generated camera-like JPEGs, 4000x3000, quality 90, mean {mb:.1f} MB "
         f"(`{args.dir}`); batch {args.batch}; one process, `torch.set_num_threads(1)`."),
        f"`uptime` before: `{load[0]}`", f"`uptime` after: `{load[1]}`", "",
        "Variants (interleaved batch by batch, order rotated; see the docstring of benchmarks/bench_data.py):",
        *[f"- `{v}`: {LABELS[v]}" for v in VARIANTS], "",
        *table(rates), "",
        "Goals (issue 15): bigseer >= 6x torchvision per core and >= 75% of the decode-only limit, both as",
        "the median of per-repeat ratios. The decode-only limit over torchvision is the ceiling of the first.", "",
        "Per repeat (img/s):", "", *per_repeat,
        *[f"| {r} | " + " | ".join(f"{rates[v][r]:.2f}" for v in VARIANTS) + f" | {loads[r]:.2f} |"
          for r in range(len(loads))],
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch", type=int, default=2, help="images per batch = interleaving unit")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default="/tmp/bigseer-bench-12mp")
    parser.add_argument("--out", default=None, help="also write the markdown report here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    make_jpegs(args.dir, args.images)
    folder = os.path.join(args.dir, "images")
    files = sorted(os.listdir(folder))
    mb = statistics.mean(os.path.getsize(os.path.join(folder, f)) for f in files) / 1e6
    before = uptime()
    print(f"data: {len(files)} JPEGs 4000x3000 (mean {mb:.1f} MB) in {args.dir} "
          f"(prepared in {time.perf_counter() - t0:.1f} s); {before}", flush=True)
    rates, loads = run(args)
    after = uptime()
    print()
    print("\n".join(table(rates)))
    print(f"\n{after}")
    if args.out:
        with open(args.out, "w") as f:
            f.write(report(args, rates, loads, (before, after), mb))


if __name__ == "__main__":
    main()
