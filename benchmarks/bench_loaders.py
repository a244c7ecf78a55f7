"""Loaders on the image kinds users have: bigseer vs DALI CPU vs torchvision, each against its decode-only limit.

Kinds (benchmarks/image_kinds.py): baseline / progressive JPEG, 4:2:0 / 4:4:4 / grayscale / CMYK, EXIF-rotated,
portrait, PNG, WebP; at web size (500..1,300 px a side) and camera size (12 MP). Per kind, SwAV's 6 crops
(2x224 @ (0.14, 1) + 4x96 @ (0.05, 0.14)) from every image, in this process:

  bigseer         SampleRenderer.new_batch + fill + finish, as MultiCropStream builds a batch
                  (bench_data.time_bigseer): full SwAV augmentation (flip, colour jitter p 0.8, grey p 0.2,
                  Gaussian blur p 0.5, normalise)
  bigseer-decode  bigseer's decode limit: read, header, crop plans, decode.decode_pixels at the planned scale
                  (no orientation, no crops)
  dali-once       DALI CPU pipeline (device_id=None): fn.decoders.image once, then per crop
                  fn.random_resized_crop + fn.color_twist (every crop) + fn.crop_mirror_normalize (flip,
                  normalise); no blur, no grayscale (DALI has no random PIL-style blur / grayscale op)
  dali-roi        the same with fn.decoders.image_random_crop per crop (ROI decode, 6 decodes) + fn.resize
  dali-decode     DALI's decode limit: fn.decoders.image alone
  torchvision     ImageFolder + transforms.v2, one Compose per crop (bench_data.baseline_dataset)
  tv-decode       torchvision's decode limit: datasets.folder.default_loader (PIL open + convert RGB)

"DALI" in the tables is the better of dali-once and dali-roi in each repeat. Per core: the process (and
every thread DALI starts) is pinned to one CPU, torch uses one thread, DALI num_threads=1; the variants are
interleaved batch by batch (order rotated) and ratios are formed inside each repeat; tables quote their
medians. All cores: bigseer MultiCropStream(num_workers=N), DALI num_threads=N, torchvision
DataLoader(num_workers=N), N = the CPUs, each timed over the same number of batches after a warm-up batch,
interleaved repeat by repeat. DALI is optional: without `nvidia.dali` importable its variants are skipped
with one line (see benchmarks/results/loaders.md for how it was installed).

    .venv/bin/python benchmarks/bench_loaders.py [--sizes web,camera] [--repeats 3] \
        [--out benchmarks/results/loaders.md]
    .venv/bin/python benchmarks/bench_loaders.py --profile [--before /tmp/before]   # per-stage ms/img only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_data import baseline_dataset, make_renderer, time_bigseer, time_torchvision  # noqa: E402
from image_kinds import KINDS, make  # noqa: E402
from loader_baselines import Dali, dali_available, time_bigseer_decode, time_tv_decode  # noqa: E402
from loader_profile import profile  # noqa: E402
from report import uptime  # noqa: E402

GROUPS = "2x224+4x96"  # the groups bench_data.make_renderer renders
NOTES = "Notes (written by hand"  # where --out's generated part ends and the notes a re-run keeps begin
PER_CORE = ("bigseer", "bigseer-decode", "dali-once", "dali-roi", "dali-decode", "torchvision", "tv-decode")


def image_paths(root: str) -> list[str]:
    folder = os.path.join(root, "images")
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if not f.startswith(".")]


def per_core(root: str, repeats: int, batch: int, dali: dict[str, Dali]) -> dict[str, list[float]]:
    """img/s per repeat of every per-core variant on the images of ``root`` (interleaved batch by batch)."""
    renderer = make_renderer(root, True)
    dataset = baseline_dataset(root)
    paths = image_paths(root)
    n = len(paths)
    assert len(renderer.catalog) == len(dataset) == n
    variants = [v for v in PER_CORE if not v.startswith("dali") or v.split("-")[1] in dali]
    warm = range(min(batch, n))
    time_bigseer(renderer, warm, 10**6)
    time_torchvision(dataset, warm, 10**6)
    for d in dali.values():
        d.time([paths[i] for i in warm])
    rates: dict[str, list[float]] = {v: [] for v in variants}
    for rep in range(repeats):
        spent = dict.fromkeys(variants, 0.0)
        for k, start in enumerate(range(0, n, batch)):
            items = range(start, min(start + batch, n))
            shift = (rep + k) % len(variants)
            for v in variants[shift:] + variants[:shift]:
                if v == "bigseer":
                    spent[v] += time_bigseer(renderer, items, rep)
                elif v == "bigseer-decode":
                    spent[v] += time_bigseer_decode(renderer, paths, items, rep)
                elif v == "torchvision":
                    spent[v] += time_torchvision(dataset, items, rep * 1000 + k)
                elif v == "tv-decode":
                    spent[v] += time_tv_decode(paths, items)
                else:
                    spent[v] += dali[v.split("-")[1]].time([paths[i] for i in items])
        for v in variants:
            rates[v].append(n / spent[v])
    if "dali-once" in rates:
        rates["dali"] = [max(a, b) for a, b in zip(rates["dali-once"], rates["dali-roi"])]
    return rates


# ---------------------------------------------------------------- all cores

def all_cores(root: str, repeats: int, batch: int, batches: int, workers: int, with_dali: bool
              ) -> dict[str, list[float]]:
    """img/s per repeat with every CPU busy: bigseer's MultiCropStream, DALI, torchvision DataLoader."""
    from bigseer.data import MultiCropStream

    paths = image_paths(root)
    runs: dict[str, object] = {}
    stream = MultiCropStream(root, GROUPS, batch, seed=0, num_workers=workers)
    runs["bigseer"] = iter(stream)
    loader = torch.utils.data.DataLoader(baseline_dataset(root), batch_size=batch, shuffle=True, num_workers=workers,
                                         persistent_workers=True, drop_last=True)
    runs["torchvision"] = None
    if with_dali:
        runs["dali-once"] = Dali("once", batch, workers, files=paths)
        runs["dali-roi"] = Dali("roi", batch, workers, files=paths)
    tv_iter = [iter(loader)]

    def next_tv():
        try:
            return next(tv_iter[0])
        except StopIteration:
            tv_iter[0] = iter(loader)
            return next(tv_iter[0])

    def step(v: str) -> None:
        if v == "bigseer":
            b = next(runs["bigseer"])
            assert b.crops[0].shape[1] == batch
        elif v == "torchvision":
            next_tv()
        else:
            runs[v].pipe.run()

    names = list(runs)
    for v in names:  # warm-up: worker start, first batches
        for _ in range(2):
            step(v)
    rates: dict[str, list[float]] = {v: [] for v in names}
    for rep in range(repeats):
        shift = rep % len(names)
        for v in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            for _ in range(batches):
                step(v)
            rates[v].append(batches * batch / (time.perf_counter() - t0))
    stream.close()
    if with_dali:
        rates["dali"] = [max(a, b) for a, b in zip(rates["dali-once"], rates["dali-roi"])]
    return rates


# ---------------------------------------------------------------- re-encoded shards

def crop_loss(max_side: int | None, sizes: list[tuple[int, int]], draws: int = 400) -> tuple[float, float]:
    """Share of 224 and of 96 crops (SwAV's default plans, library plan_crops) whose box at the capped size
    has fewer pixels than the crop on a side, i.e. would be upsampled: what --max_side takes from the crops."""
    from bigseer.data import AugmentConfig, parse_crops
    from bigseer.data.multicrop import plan_crops

    groups = parse_crops(GROUPS)
    up = {224: [0, 0], 96: [0, 0]}
    rng = np.random.default_rng(0)
    for i in range(draws):
        w, h = sizes[i % len(sizes)]
        if max_side and max(w, h) > max_side:
            f = max_side / max(w, h)
            w, h = max(1, round(w * f)), max(1, round(h * f))
        for p in plan_crops(w, h, groups, AugmentConfig(), rng):
            x0, y0, x1, y1 = p.box
            up[p.size][0] += int(min(x1 - x0, y1 - y0) < p.size)
            up[p.size][1] += 1
    return up[224][0] / up[224][1], up[96][0] / up[96][1]


def reshard(root: str, out: str, max_side: int, quality: int, repeats: int, batch: int) -> dict:
    """bigseer per core on ``root`` as it is vs re-encoded (bigseer shard --max_side --quality), interleaved."""
    from bigseer.data.shard_writer import Reencode, write_shards

    pattern = os.path.join(out, f"side{max_side}-q{quality}", "shard-%04d.tar")
    shutil.rmtree(os.path.dirname(pattern), ignore_errors=True)  # written (and timed) by every run
    t0 = time.perf_counter()
    result = write_shards(root, pattern, reencode=Reencode(max_side, quality))
    write_rate = result.samples / (time.perf_counter() - t0)
    index = os.path.join(os.path.dirname(pattern), "index.json")
    renderers = {"original": make_renderer(root, True), "re-encoded": make_renderer(index, True)}
    n = len(renderers["original"].catalog)
    for r in renderers.values():
        time_bigseer(r, range(min(batch, n)), 10**6)
    rates: dict[str, list[float]] = {k: [] for k in renderers}
    for rep in range(repeats):
        spent = dict.fromkeys(renderers, 0.0)
        for k, start in enumerate(range(0, n, batch)):
            items = range(start, min(start + batch, n))
            for name in (list(renderers) if (rep + k) % 2 == 0 else list(renderers)[::-1]):
                spent[name] += time_bigseer(renderers[name], items, rep)
        for name in renderers:
            rates[name].append(n / spent[name])
    sizes = []
    for p in image_paths(root):
        with Image.open(p) as img:
            sizes.append(img.size)
    mb = {"original": sum(os.path.getsize(p) for p in image_paths(root)) / n / 1e6,
          "re-encoded": sum(os.path.getsize(os.path.join(os.path.dirname(pattern), f))
                            for f in os.listdir(os.path.dirname(pattern)) if f.endswith(".tar")) / n / 1e6}
    return {"rates": rates, "write_rate": write_rate, "mb": mb,
            "loss": {str(s): crop_loss(s, sizes) for s in (None, 512, 800, 1024)}}


def profile_compare(root: str, before: str | None, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Per-stage profiles of this tree ("after") and of ``before`` (a copy of the package, on PYTHONPATH),
    in alternating subprocesses pinned to the same CPU."""
    out: dict[str, dict[str, list[float]]] = {}
    sides = [("after", None)] + ([("before", before)] if before else [])
    for r in range(rounds):
        for name, path in (sides if r % 2 == 0 else sides[::-1]):
            env = dict(os.environ)
            if path:
                env["PYTHONPATH"] = path + os.pathsep + env.get("PYTHONPATH", "")
            cmd = [sys.executable, os.path.abspath(__file__), "--profile-one", root]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            for k, v in json.loads(res.stdout.strip().splitlines()[-1]).items():
                out.setdefault(name, {}).setdefault(k, []).append(v)
    return out


# ---------------------------------------------------------------- report

def med(xs: list[float]) -> float:
    return statistics.median(xs)


def ratio(a: list[float], b: list[float], pct: bool = False) -> str:
    r = [x / y for x, y in zip(a, b)]
    if pct:
        return f"{100 * med(r):.0f}%"
    return f"{med(r):.2f}x ({min(r):.2f}-{max(r):.2f})"


def per_core_table(results: dict[str, dict[str, list[float]]], has_dali: bool) -> list[str]:
    head = ["kind", "bigseer img/s", "DALI img/s (once / roi)", "torchvision img/s", "bigseer vs DALI",
            "bigseer vs torchvision", "bigseer % of decode", "DALI % of decode", "torchvision % of decode",
            "decode-only img/s (bigseer / DALI / tv)"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for kind, r in results.items():
        dali_cells = [f"{med(r['dali']):.1f} ({med(r['dali-once']):.1f} / {med(r['dali-roi']):.1f})",
                      ratio(r["bigseer"], r["dali"])] if has_dali else ["-", "-"]
        cells = [kind, f"{med(r['bigseer']):.1f}", dali_cells[0], f"{med(r['torchvision']):.1f}", dali_cells[1],
                 ratio(r["bigseer"], r["torchvision"]), ratio(r["bigseer"], r["bigseer-decode"], True),
                 ratio(r["dali"], r["dali-decode"], True) if has_dali else "-",
                 ratio(r["torchvision"], r["tv-decode"], True),
                 f"{med(r['bigseer-decode']):.1f} / " + (f"{med(r['dali-decode']):.1f}" if has_dali else "-")
                 + f" / {med(r['tv-decode']):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def all_cores_table(results: dict[str, dict[str, list[float]]], has_dali: bool) -> list[str]:
    lines = ["| kind | bigseer img/s | DALI img/s (once / roi) | torchvision img/s | bigseer vs DALI | "
             "bigseer vs torchvision |", "|---|---|---|---|---|---|"]
    for kind, r in results.items():
        d = (f"{med(r['dali']):.1f} ({med(r['dali-once']):.1f} / {med(r['dali-roi']):.1f})",
             ratio(r["bigseer"], r["dali"])) if has_dali else ("-", "-")
        lines.append(f"| {kind} | {med(r['bigseer']):.1f} | {d[0]} | {med(r['torchvision']):.1f} | {d[1]} | "
                     f"{ratio(r['bigseer'], r['torchvision'])} |")
    return lines


def profile_table(prof: dict[str, dict[str, list[float]]]) -> list[str]:
    sides = list(prof)
    keys = list(prof[sides[0]])
    lines = ["| stage (ms per image) | " + " | ".join(f"{s} (median of {len(prof[s][keys[0]])})" for s in sides) + " |",
             "|---" * (len(sides) + 1) + "|"]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(f"{med(prof[s][k]):.2f}" if k in prof[s] else "-" for s in sides) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/bigseer-kinds", help="where the generated images live")
    parser.add_argument("--sizes", default="web,camera")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--web-count", type=int, default=24)
    parser.add_argument("--camera-count", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--all-cores-kinds", default="web/jpeg-420,web/jpeg-progressive",
                        help="SIZE/KIND list for the all-cores section ('' to skip)")
    parser.add_argument("--reshard", default="camera/jpeg-420,camera/jpeg-exif-rotated",
                        help="SIZE/KIND list re-encoded by `bigseer shard --max_side --quality` ('' to skip)")
    parser.add_argument("--max-side", type=int, default=1024)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--cpu", type=int, default=None, help="CPU the per-core section is pinned to (default: last)")
    parser.add_argument("--profile", action="store_true", help="per-stage profile only (web/jpeg-420)")
    parser.add_argument("--profile-kind", default="web/jpeg-420", help="SIZE/KIND the profile runs on")
    parser.add_argument("--profile-rounds", type=int, default=4)
    parser.add_argument("--profile-one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--before", default=None, help="a copy of the package before the change, for --profile")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[-1] if args.cpu is None else args.cpu
    if args.profile_one:
        os.sched_setaffinity(0, {cpu})
        print(json.dumps(profile(args.profile_one, 2)))
        return
    if args.profile:
        size, kind = args.profile_kind.split("/")
        root = make(args.root, kind, size, args.web_count if size == "web" else args.camera_count)
        prof = profile_compare(root, args.before, args.profile_rounds)
        print("\n".join(profile_table(prof)))
        return
    env = f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else ""
    cmd = f"    {env}.venv/bin/python benchmarks/bench_loaders.py " + " ".join(sys.argv[1:])
    before = uptime()
    print(before, flush=True)
    skip = dali_available()
    if skip:
        print(skip)
    t_start = time.perf_counter()
    sizes = args.sizes.split(",")
    roots = {(s, k): make(args.root, k, s, args.web_count if s == "web" else args.camera_count)
             for s in sizes for k in args.kinds.split(",")}
    print(f"images ready in {time.perf_counter() - t_start:.0f} s", flush=True)
    os.sched_setaffinity(0, {cpu})  # threads started from here on (DALI's) inherit the one CPU
    dali = {m: Dali(m, 8) for m in ("once", "roi", "decode")} if not skip else {}
    results: dict[str, dict[str, dict[str, list[float]]]] = {s: {} for s in sizes}
    loads = []
    for (s, k), root in roots.items():
        t0 = time.perf_counter()
        batch = 4 if s == "web" else 2
        results[s][k] = per_core(root, args.repeats, batch, dali)
        loads.append(os.getloadavg()[0])
        r = results[s][k]
        print(f"{s}/{k}: " + ", ".join(f"{v} {med(x):.1f}" for v, x in r.items()) +
              f" img/s ({time.perf_counter() - t0:.0f} s, load {loads[-1]:.2f})", flush=True)
    del dali
    os.sched_setaffinity(0, set(cpus))
    allc: dict[str, dict[str, list[float]]] = {}
    for spec in filter(None, args.all_cores_kinds.split(",")):
        s, k = spec.split("/")
        allc[spec] = all_cores(make(args.root, k, s, args.web_count if s == "web" else args.camera_count),
                               args.repeats, 8, 6, len(cpus), not skip)
        print(f"all cores {spec}: " + ", ".join(f"{v} {med(x):.1f}" for v, x in allc[spec].items()), flush=True)
    os.sched_setaffinity(0, {cpu})
    resh = {}
    for spec in filter(None, args.reshard.split(",")):
        s, k = spec.split("/")
        resh[spec] = reshard(make(args.root, k, s, args.camera_count), os.path.join(args.root, "shards", s, k),
                             args.max_side, args.quality, args.repeats, 2)
        print(f"reshard {spec}: {resh[spec]}", flush=True)
    os.sched_setaffinity(0, set(cpus))
    after = uptime()
    print(after)
    has_dali = not skip
    lines = ["## Loaders on the image kinds users have: bigseer vs DALI CPU vs torchvision (issue 25)", "",
             "Command (repo root, 2-core CPU machine shared with another engineer running tests):", "",
             cmd.rstrip(), "",
             f"`uptime` before: `{before}`", f"`uptime` after: `{after}`",
             f"1-minute load after each per-core kind: {', '.join(f'{x:.1f}' for x in loads)}", "",
             "Variants, pinning and interleaving: see the docstring of benchmarks/bench_loaders.py. "
             + (skip if skip else "DALI: nvidia-dali-cuda120 2.4.0 CPU pipelines (device_id=None)."), ""]
    for s in sizes:
        n = args.web_count if s == "web" else args.camera_count
        lines += [f"### Per core (one CPU), {s} size: {n} images per kind, {args.repeats} repeats, SwAV 2x224+4x96",
                  "", "Ratios: median over repeats of the per-repeat ratio (range); % of decode: the variant's rate "
                  "over its own decode-only rate, per-repeat median.", "",
                  *per_core_table(results[s], has_dali), ""]
    if allc:
        lines += [f"### All cores ({len(cpus)} CPUs, workers = {len(cpus)}), batch 8, 6 batches per timing, "
                  f"{args.repeats} repeats", "", *all_cores_table(allc, has_dali), ""]
    if resh:
        lines += [f"### Re-encoded shards: `bigseer shard --max_side {args.max_side} --quality {args.quality}` "
                  "(bigseer per core, interleaved with the originals)", "",
                  "| kind | original img/s | re-encoded img/s | speed-up | MB/image orig -> shard "
                  "| shard writing img/s |",
                  "|---|---|---|---|---|---|"]
        for spec, r in resh.items():
            lines.append(f"| {spec} | {med(r['rates']['original']):.1f} | {med(r['rates']['re-encoded']):.1f} | "
                         f"{ratio(r['rates']['re-encoded'], r['rates']['original'])} | "
                         f"{r['mb']['original']:.2f} -> {r['mb']['re-encoded']:.2f} | {r['write_rate']:.1f} |")
        lines += ["", "What a cap does to SwAV's default crops (library plan_crops, 400 draws on these images' "
                  "aspect ratios): share of crops whose box has fewer pixels than the crop on its short side "
                  "(upsampled, i.e. detail the source had is lost):", "",
                  "| max side | 224 crops upsampled | 96 crops upsampled |", "|---|---|---|"]
        first = next(iter(resh.values()))
        for cap, (a, b) in first["loss"].items():
            lines.append(f"| {'none (12 MP)' if cap == 'None' else cap} | {100 * a:.1f}% | {100 * b:.1f}% |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        notes = ""
        if os.path.exists(args.out):  # the hand-written notes below the generated part stay
            with open(args.out) as f:
                kept = f.read()
            notes = kept[kept.index(NOTES):] if NOTES in kept else ""
        with open(args.out, "w") as f:
            f.write(text + "\n" + ("\n" + notes if notes else ""))
        with open("/tmp/bench_loaders.json", "w") as f:  # raw per-repeat rates
            json.dump({"per_core": results, "all_cores": allc, "reshard": resh, "loads": loads}, f)


if __name__ == "__main__":
    main()
