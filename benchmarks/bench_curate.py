"""Curation benchmarks (``bigseer embed`` / ``dedup`` / ``curate``): results in benchmarks/results/curate.md.

    # near-duplicate threshold: planted copies (half size, JPEG q=60, 90% centre crop, byte copies) of builtin
    # images; precision / recall of dedup per threshold, for each trunk given
    python benchmarks/bench_curate.py threshold --weights runs/demo/export --weights random --out /tmp/thr
    # k-means + streaming assignment + balanced sampling on N synthetic float16 embeddings read block by block
    python benchmarks/bench_curate.py scale --rows 10000000 --dim 128 --levels 1000,100,10 --dir /tmp/scale

Precision / recall are per image: a removed image counts as correct when it is a planted copy (at most one
image per planted group is kept); recall is the share of planted copies removed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import emit, uptime  # noqa: E402


# ---- threshold ---------------------------------------------------------------------------------------------
def plant(folder: Path, originals: int, every: int = 4) -> set[str]:
    """``originals`` builtin images as PNG, near copies of every ``every``-th, byte copies of every 8th + 2."""
    from PIL import Image

    from bigseer.data.builtin import builtin_image

    folder.mkdir(parents=True, exist_ok=True)
    copies = set()
    for i in range(originals):
        img = builtin_image(i)
        img.save(folder / f"{i:05d}.png")
        if i % every == 0:
            w, h = img.size
            img.resize((w // 2, h // 2), Image.Resampling.BILINEAR).save(folder / f"{i:05d}_resized.png")
            img.save(folder / f"{i:05d}_q60.jpg", quality=60)
            dx, dy = int(w * 0.05), int(h * 0.05)
            img.crop((dx, dy, w - dx, h - dy)).save(folder / f"{i:05d}_crop.png")
            copies |= {f"{i:05d}_resized.png", f"{i:05d}_q60.jpg", f"{i:05d}_crop.png"}
        if i % 8 == 2:
            shutil.copy(folder / f"{i:05d}.png", folder / f"{i:05d}_exact.png")
            copies.add(f"{i:05d}_exact.png")
    return copies


def sweep(emb: Path, copies: set[str], thresholds: list[float]) -> tuple[list[dict], dict]:
    from bigseer.curate.dedup import DedupConfig, find_duplicates
    from bigseer.curate.store import EmbeddingStore

    store = EmbeddingStore(emb)
    x = store.rows().read(0, store.n).astype(np.float32)
    names = [os.path.basename(store.paths[i]) for i in range(store.n)]
    base = np.array([int(n[:5]) for n in names])
    sim = x @ x.T
    iu = np.triu_indices(len(x), 1)
    same = base[iu[0]] == base[iu[1]]
    kinds = {}
    for kind in ("resized", "q60", "crop"):
        sel = same & np.array([kind in names[i] or kind in names[j] for i, j in zip(*iu)])
        kinds[kind] = float(np.percentile(sim[iu][sel], 5))
    dist = {"copy_min": float(sim[iu][same].min()), "copy_p5": float(np.percentile(sim[iu][same], 5)),
            "distinct_max": float(sim[iu][~same].max()), "distinct_p999": float(np.percentile(sim[iu][~same], 99.9)),
            "distinct_median": float(np.median(sim[iu][~same])), "copy_p5_by_kind": kinds}
    rows = []
    for t in thresholds:
        r = find_duplicates(store, DedupConfig(str(emb), "", threshold=t))
        removed = {names[int(i)] for g in r.groups for i in g[1:]}
        hit = len(removed & copies)
        rows.append({"threshold": t, "removed": len(removed), "precision": hit / max(1, len(removed)),
                     "recall": hit / len(copies)})
    return rows, dist


def run_threshold(args: argparse.Namespace) -> str:
    from bigseer.curate.embed import EmbedConfig, embed_source

    out = Path(args.out)
    copies = plant(out / "imgs", args.originals)
    lines = ["## Near-duplicate threshold", "", f"`{' '.join(sys.argv)}`", "",
             f"{args.originals} builtin images (64-256 px, 10 scene classes) + {len(copies)} planted copies of them: "
             "half size, JPEG q=60 and 90% centre crop of every 4th, byte-identical copies of every 8th. "
             f"Embedded at {args.crop} px (short side {args.resize}). Machine: {uptime()}", ""]
    for w in args.weights:
        weights = w
        if w == "random":
            from tests.curate.helpers import write_weights

            weights = write_weights(out / "random.safetensors")
        emb = out / f"emb-{len(lines)}"
        t0 = time.perf_counter()
        embed_source(EmbedConfig(str(out / "imgs"), weights, str(emb), part_size=256, resize=args.resize,
                                 crop=args.crop))
        rows, dist = sweep(emb, copies, args.thresholds)
        lines += [f"### trunk: {w} (embed {time.perf_counter() - t0:.0f} s)", "",
                  f"cosine of copy pairs: min {dist['copy_min']:.3f}, 5th pct {dist['copy_p5']:.3f} (by kind, 5th pct: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in dist["copy_p5_by_kind"].items())
                  + f"); distinct pairs: median {dist['distinct_median']:.3f}, 99.9th pct {dist['distinct_p999']:.3f}, "
                  f"max {dist['distinct_max']:.3f}", "", "| threshold | removed | precision | recall |", "|---|---|---|---|"]
        lines += [f"| {r['threshold']:.3f} | {r['removed']} | {r['precision']:.3f} | {r['recall']:.3f} |" for r in rows]
        lines.append("")
    return "\n".join(lines) + "\n"


# ---- scale -------------------------------------------------------------------------------------------------
def generate(path: Path, rows: int, dim: int, centres: int, seed: int = 0, block: int = 1 << 18) -> None:
    """``rows`` unit-norm float16 vectors around ``centres`` Zipf-weighted centres, written block by block."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim)).astype(np.float32)
    weights = 1.0 / np.arange(1, centres + 1) ** 1.1
    weights /= weights.sum()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.dtype(np.float16).str, "fortran_order": False,
                                                 "shape": (rows, dim)})
        for start in range(0, rows, block):
            n = min(block, rows - start)
            lab = rng.choice(centres, size=n, p=weights)
            x = c[lab] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            f.write(x.astype(np.float16).tobytes())
    os.replace(tmp, path)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_scale(args: argparse.Namespace) -> str:
    from bigseer.curate import kmeans
    from bigseer.curate.hierarchy import hierarchical_kmeans
    from bigseer.curate.rows import NpyRows
    from bigseer.curate.sampling import balanced_sample

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"emb-{args.rows}x{args.dim}.npy"
    t0 = time.perf_counter()
    if not path.exists():
        subprocess.run([sys.executable, __file__, "gen", str(path), str(args.rows), str(args.dim)], check=True)
    gen_s = time.perf_counter() - t0
    rows = NpyRows(path)
    rss0 = peak_rss_mib()
    stages = {}
    t = time.perf_counter()
    orig_assign = kmeans.assign
    timings = {"assign_s": 0.0, "assign_passes": 0}

    def timed_assign(r, c, backend):  # count the streaming passes over all rows
        s = time.perf_counter()
        out = orig_assign(r, c, backend)
        if r.n == rows.n:
            timings["assign_s"] += time.perf_counter() - s
            timings["assign_passes"] += 1
        return out

    kmeans.assign = timed_assign
    levels = hierarchical_kmeans(rows, args.levels, seed=0, niter=args.niter, resample_steps=args.resample_steps)
    stages["hierarchical_kmeans_s"] = time.perf_counter() - t
    t = time.perf_counter()
    picked = balanced_sample(levels, np.ones(rows.n, dtype=bool), args.target, seed=0)
    stages["balanced_sample_s"] = time.perf_counter() - t
    sizes = np.bincount(levels[0].labels, minlength=args.levels[0])
    after = np.bincount(levels[0].labels[picked], minlength=args.levels[0])
    gib = rows.n * rows.dim * 2 / 2**30
    lines = ["## k-means at scale", "", f"`{' '.join(sys.argv)}`", "",
             f"{rows.n:,} x {rows.dim} float16 embeddings ({gib:.2f} GiB on disk, Zipf-weighted mixture of 5,000 "
             f"centres), read with pread in blocks of 65,536 rows (no memory map). Machine: {uptime()}; "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, nice 15.", "",
             "| stage | seconds |", "|---|---|",
             f"| generate (separate process) | {gen_s:.0f} |",
             f"| hierarchical k-means, levels {args.levels}, {args.resample_steps} resampling step(s), {args.niter} iters "
             f"(level 1 fit on {min(rows.n, 256 * args.levels[0]):,} sampled rows) | {stages['hierarchical_kmeans_s']:.0f} |",
             f"| of which streaming assignment of all rows ({timings['assign_passes']} passes) | {timings['assign_s']:.0f} |",
             f"| balanced sampling to {args.target:,} | {stages['balanced_sample_s']:.1f} |", "",
             f"Peak RSS: {peak_rss_mib():.0f} MiB (after opening the file: {rss0:.0f} MiB); the labels + distances of all "
             f"rows are {rows.n * 8 / 2**20:.0f} MiB of it. Level-1 cluster sizes before: max {sizes.max()}, "
             f"median {np.median(sizes):.0f}, min {sizes.min()}; in the sample: max {after.max()}, "
             f"median {np.median(after):.0f}, min {after.min()}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    thr = sub.add_parser("threshold")
    thr.add_argument("--weights", action="append", required=True, help="trunk weights, or 'random' (repeatable)")
    thr.add_argument("--out", required=True)
    thr.add_argument("--originals", type=int, default=200)
    thr.add_argument("--resize", type=int, default=64)
    thr.add_argument("--crop", type=int, default=64)
    thr.add_argument("--thresholds", type=float, nargs="+",
                     default=[0.8, 0.85, 0.9, 0.925, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995])
    thr.add_argument("--markdown", default=None)
    sc = sub.add_parser("scale")
    sc.add_argument("--rows", type=int, default=10_000_000)
    sc.add_argument("--dim", type=int, default=128)
    sc.add_argument("--levels", type=lambda s: [int(v) for v in s.split(",")], default=[1000, 100, 10])
    sc.add_argument("--target", type=int, default=1_000_000)
    sc.add_argument("--niter", type=int, default=10)
    sc.add_argument("--resample_steps", type=int, default=1)
    sc.add_argument("--dir", required=True)
    sc.add_argument("--markdown", default=None)
    gen = sub.add_parser("gen")
    gen.add_argument("path")
    gen.add_argument("rows", type=int)
    gen.add_argument("dim", type=int)
    args = parser.parse_args(argv)
    if args.what == "gen":
        generate(Path(args.path), args.rows, args.dim, centres=5000)
        return 0
    text = run_threshold(args) if args.what == "threshold" else run_scale(args)
    emit(text, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
