"""Curation benchmarks (``bigseer embed`` / ``dedup`` / ``curate``): results in benchmarks/results/curate.md.

    # near-duplicate threshold: planted copies (half size, JPEG q=60, 90% centre crop, byte copies) of builtin
    # images; precision / recall of dedup per threshold, for each trunk given
    python benchmarks/bench_curate.py threshold --weights runs/demo/export --weights random --out /tmp/thr
    # k-means + streaming assignment + balanced sampling on N synthetic float16 embeddings read block by block
    python benchmarks/bench_curate.py scale --rows 10000000 --dim 128 --levels 1000,100,10 --dir /tmp/scale
    # a wild digits pile: pretrain on it raw vs on its curated list (same steps), probe on a balanced split
    python benchmarks/bench_curate.py pile --dir /tmp/pile --steps 1500

Precision / recall are per image: a removed image counts as correct when it is a planted copy (at most one
image per planted group is kept); recall is the share of planted copies removed.
"""

from __future__ import annotations

import argparse
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


def sweep(emb: Path, copies: set[str], thresholds: list[float], verifies: list[float]) -> tuple[list[dict], dict]:
    """Per (threshold, verify): images removed, precision, recall; and the similarity distributions."""
    from bigseer.curate.dedup import DedupConfig, find_duplicates
    from bigseer.curate.store import EmbeddingStore

    store = EmbeddingStore(emb)
    names = [os.path.basename(store.paths[i]) for i in range(store.n)]
    base = np.array([int(n[:5]) for n in names])
    iu = np.triu_indices(store.n, 1)
    same = base[iu[0]] == base[iu[1]]
    dist = {}
    for tensor in ("embeddings", "thumbs"):
        x = store.rows(tensor).read(0, store.n).astype(np.float32)
        sim = (x @ x.T)[iu]
        kinds = {}
        for kind in ("resized", "q60", "crop"):
            sel = same & np.array([kind in names[i] or kind in names[j] for i, j in zip(*iu)])
            kinds[kind] = float(np.percentile(sim[sel], 5))
        dist[tensor] = {"copy_min": float(sim[same].min()), "copy_p5": float(np.percentile(sim[same], 5)),
                        "distinct_max": float(sim[~same].max()),
                        "distinct_p999": float(np.percentile(sim[~same], 99.9)),
                        "distinct_median": float(np.median(sim[~same])), "copy_p5_by_kind": kinds}
    rows = []
    for t in thresholds:
        for v in verifies:
            r = find_duplicates(store, DedupConfig(str(emb), "", threshold=t, verify=v))
            removed = {names[int(i)] for g in r.groups for i in g[1:]}
            hit = len(removed & copies)
            rows.append({"threshold": t, "verify": v, "removed": len(removed),
                         "precision": hit / max(1, len(removed)), "recall": hit / len(copies)})
    return rows, dist


def _dist_line(name: str, d: dict) -> str:
    return (f"{name}: copy pairs min {d['copy_min']:.3f}, 5th pct {d['copy_p5']:.3f} (by kind, 5th pct: "
            + ", ".join(f"{k} {v:.3f}" for k, v in d["copy_p5_by_kind"].items())
            + f"); distinct pairs median {d['distinct_median']:.3f}, 99.9th pct {d['distinct_p999']:.3f}, "
            f"max {d['distinct_max']:.3f}")


def run_threshold(args: argparse.Namespace) -> str:
    from bigseer.curate.embed import EmbedConfig, embed_source

    out = Path(args.out)
    copies = plant(out / "imgs", args.originals)
    lines = ["## Near-duplicate threshold", "", f"`{' '.join(sys.argv)}`", "",
             f"{args.originals} builtin images (64-256 px, 10 scene classes) + {len(copies)} planted copies of them: "
             "half size, JPEG q=60 and 90% centre crop of every 4th, byte-identical copies of every 8th. "
             f"Embedded at {args.crop} px (short side {args.resize}). Cells: precision / recall of the removed "
             f"images (`bigseer dedup --threshold T --verify V`; V = -1: trunk cosine only). Machine: {uptime()}", ""]
    for n, w in enumerate(args.weights):
        weights = w
        if w == "random":
            from tests.curate.helpers import write_weights

            weights = write_weights(out / "random.safetensors")
        emb = out / f"emb-{n}"
        t0 = time.perf_counter()
        if not emb.exists():
            embed_source(EmbedConfig(str(out / "imgs"), weights, str(emb), part_size=256, resize=args.resize,
                                     crop=args.crop))
        rows, dist = sweep(emb, copies, args.thresholds, args.verifies)
        lines += [f"### trunk: {w} ({time.perf_counter() - t0:.0f} s)", "",
                  "- " + _dist_line("trunk cosine", dist["embeddings"]),
                  "- " + _dist_line("thumbnail correlation", dist["thumbs"]), "",
                  "| threshold | " + " | ".join(f"verify {v:g}" for v in args.verifies) + " |",
                  "|---" * (len(args.verifies) + 1) + "|"]
        for t in args.thresholds:
            cells = [f"{r['precision']:.2f} / {r['recall']:.2f}" for r in rows if r["threshold"] == t]
            lines.append(f"| {t:g} | " + " | ".join(cells) + " |")
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
             f"| hierarchical k-means, levels {args.levels}, {args.resample_steps} resampling step(s), "
             f"{args.niter} iters (level 1 fit on {min(rows.n, 256 * args.levels[0]):,} sampled rows) | "
             f"{stages['hierarchical_kmeans_s']:.0f} |",
             f"| of which streaming assignment of all rows ({timings['assign_passes']} passes) | "
             f"{timings['assign_s']:.0f} |",
             f"| balanced sampling to {args.target:,} | {stages['balanced_sample_s']:.1f} |", "",
             f"Peak RSS: {peak_rss_mib():.0f} MiB (after opening the file: {rss0:.0f} MiB); the labels + distances "
             "of all "
             f"rows are {rows.n * 8 / 2**20:.0f} MiB of it. Level-1 cluster sizes before: max {sizes.max()}, "
             f"median {np.median(sizes):.0f}, min {sizes.min()}; in the sample: max {after.max()}, "
             f"median {np.median(after):.0f}, min {after.min()}."]
    return "\n".join(lines) + "\n"


# ---- pile: pretrain raw vs pretrain on the curated pile ----------------------------------------------------
def make_pile(root: Path, size: int, seed: int) -> dict[str, dict]:
    """A wild pile from the digits' train split: long-tailed classes (class c keeps 0.6**c of its images, at
    least 4), near-duplicate bursts (24 JPEG / crop / resize variants of 5 head images), byte copies (3 x 8),
    decodable junk (30 noise, 10 flat images) and 5 files that are not images. Returns file -> facts."""
    import io

    from PIL import Image

    from benchmarks.bench_pretraining_helps import write_digits_folder
    from bigseer.downstream.labeled_data import scan_split

    write_digits_folder(str(root / "labeled"), size, seed=seed)
    train = scan_split(str(root / "labeled"), "train")
    rng = np.random.default_rng(seed)
    pile = root / "pile"
    pile.mkdir(parents=True, exist_ok=True)
    facts: dict[str, dict] = {}
    by_class: dict[int, list[str]] = {}
    for path, y in zip(train.paths, train.targets):
        by_class.setdefault(int(y), []).append(path)
    originals: list[tuple[str, int]] = []
    for c, paths in sorted(by_class.items()):
        keep = max(4, round(len(paths) * 0.6 ** c))
        for path in sorted(rng.choice(paths, keep, replace=False)):
            name = f"c{c}_{Path(path).stem}.png"
            shutil.copy(path, pile / name)
            facts[name] = {"label": c, "copy_of": None}
            originals.append((name, c))
    heads = [o for o in originals if o[1] in (0, 1)]
    for b, (name, c) in enumerate(heads[:5]):
        img = Image.open(pile / name).convert("RGB")
        for v in range(24):
            w, h = img.size
            crop = rng.uniform(0, 0.08)
            dx, dy = int(w * crop / 2), int(h * crop / 2)
            out = img.crop((dx, dy, w - dx, h - dy))
            scale = rng.uniform(0.6, 1.0)
            out = out.resize((max(8, int(out.width * scale)), max(8, int(out.height * scale))),
                             Image.Resampling.BILINEAR)
            buf = io.BytesIO()
            out.save(buf, format="JPEG", quality=int(rng.integers(40, 96)))
            copy = f"c{c}_burst{b}_{v:02d}.jpg"
            (pile / copy).write_bytes(buf.getvalue())
            facts[copy] = {"label": c, "copy_of": name}
    for e, (name, c) in enumerate(originals[10:13]):
        for v in range(8):
            copy = f"c{c}_exact{e}_{v}.png"
            shutil.copy(pile / name, pile / copy)
            facts[copy] = {"label": c, "copy_of": name}
    for j in range(30):
        noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(noise).save(pile / f"junk_noise{j:02d}.png")
        facts[f"junk_noise{j:02d}.png"] = {"label": -1, "copy_of": None}
    for j in range(10):
        Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3))).save(pile / f"junk_flat{j}.png")
        facts[f"junk_flat{j}.png"] = {"label": -1, "copy_of": None}
    for j in range(5):
        (pile / f"junk_text{j}.png").write_bytes(b"not an image " * (j + 1))
        facts[f"junk_text{j}.png"] = {"label": -2, "copy_of": None}
    return facts


def composition(names: list[str], facts: dict[str, dict]) -> dict:
    """Class counts, junk and copies of a pretraining set (file names of the pile)."""
    labels = [facts[n]["label"] for n in names]
    counts = np.bincount([lab for lab in labels if lab >= 0], minlength=10)
    p = counts / max(1, counts.sum())
    nz = p[p > 0]
    return {"images": len(names), "per_class": counts.tolist(), "junk": sum(1 for lab in labels if lab < 0),
            "copies": sum(1 for n in names if facts[n]["copy_of"] is not None),
            "class_entropy_ratio": round(float(-(nz * np.log(nz)).sum() / np.log(10)), 3),
            "max_over_min_class": round(float(counts.max() / max(1, counts.min())), 1)}


def run_pile(args: argparse.Namespace) -> str:
    import torch

    from benchmarks.bench_pretraining_helps import evaluate, pretrain_trunk, table
    from bigseer.curate.dedup import DedupConfig, find_duplicates, write_dedup
    from bigseer.curate.embed import EmbedConfig, embed_source
    from bigseer.curate.pipeline import CurateConfig, curate_embeddings
    from bigseer.curate.store import EmbeddingStore

    torch.set_num_threads(1)
    root = Path(args.dir)
    facts = make_pile(root, args.size, args.seed)
    ns = argparse.Namespace(recipe="auto", set=[], model="regnety_tiny", pretrain_steps=args.steps, pretrain_batch=64,
                            seed=args.seed, workers=1, size=args.size, no_baselines=False, split="judge",
                            shots=[1, 5, 10], fractions=[0.1], draws=5)
    t0 = time.time()
    raw_export, raw_facts = pretrain_trunk(ns, str(root / "pile"), str(root / "run-raw"))
    emb = root / "emb"
    embed_source(EmbedConfig(str(root / "pile"), raw_export, str(emb), part_size=256, resize=args.size, crop=args.size))
    store = EmbeddingStore(emb)
    dedup = find_duplicates(store, DedupConfig(str(emb), str(root / "dedup"), threshold=args.threshold,
                                               verify=args.verify))
    write_dedup(store, dedup, root / "dedup")
    removed = {Path(store.paths[int(r)]).name for g in dedup.groups for r in g[1:]}
    planted = {n for n, f in facts.items() if f["copy_of"] is not None}
    hit = len(removed & planted)
    cur = curate_embeddings(CurateConfig(str(emb), str(root / "curated"), keep=str(root / "dedup"),
                                         fraction=args.fraction, seed=args.seed))
    curated_names = [Path(p).name for p in Path(cur.data).read_text().splitlines()]
    cur_export, cur_facts = pretrain_trunk(ns, str(cur.data), str(root / "run-curated"))
    results = evaluate(ns, str(root / "labeled"), raw_export)
    results = {"pretrained on raw pile": results.pop("SwAV-pretrained"), **results}
    ns.no_baselines = True
    results["pretrained on curated pile"] = evaluate(ns, str(root / "labeled"), cur_export)["SwAV-pretrained"]
    order = ["pretrained on raw pile", "pretrained on curated pile", "random init", "raw pixels"]
    results = {k: results[k] for k in order}
    pile_names = [Path(store.paths[i]).name for i in range(store.n)]
    before, after = composition(pile_names, facts), composition(curated_names, facts)
    lines = ["## Pretrain on the raw pile vs on the curated pile (digits)", "", f"`{' '.join(sys.argv)}`", "",
             f"Machine: {uptime()}; total {time.time() - t0:.0f} s wall.", "",
             f"Pile: sklearn digits (train split, {args.size} px), long-tailed classes (class c keeps 0.6^c), 5 bursts "
             f"of 24 near copies, 3 x 8 byte copies, 40 decodable junk images, 5 non-images: "
             f"{len(facts)} files, {store.n} embedded ({store.skipped}). Both runs: regnety_tiny, `--recipe auto`, "
             f"{args.steps} steps, batch 64. The curated run starts from scratch on the curated list; its embeddings "
             f"come from the raw run's trunk.", "",
             f"Dedup (threshold {args.threshold}, verify {args.verify}, raw-run trunk): removed {len(removed)}, "
             f"of them planted copies {hit}: precision {hit / max(1, len(removed)):.3f}, "
             f"recall {hit / len(planted):.3f} "
             f"({dedup.report['removed_exact_copies']} exact, {dedup.report['removed_near_copies']} near).", "",
             "| pretraining set | images | per class 0..9 | junk | copies | class entropy / ln 10 | max/min class |",
             "|---|---|---|---|---|---|---|"]
    for name, c in (("raw pile (embedded)", before), (f"curated ({args.fraction:g} of kept)", after)):
        lines.append(f"| {name} | {c['images']} | {c['per_class']} | {c['junk']} | {c['copies']} | "
                     f"{c['class_entropy_ratio']} | {c['max_over_min_class']} |")
    lines += ["", "Probe on the balanced held-out split (logistic, frozen res5, mean ± std over 5 draws):", "",
              table(results), "",
              f"Pretraining: raw {raw_facts['cpu_s']} CPU s, loss {raw_facts['first_loss']:.3f} -> "
              f"{raw_facts['last_loss']:.3f}; curated {cur_facts['cpu_s']} CPU s, loss {cur_facts['first_loss']:.3f}"
              f" -> {cur_facts['last_loss']:.3f}."]
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
    thr.add_argument("--thresholds", type=float, nargs="+", default=[0.7, 0.8, 0.85, 0.9, 0.95, 0.99])
    thr.add_argument("--verifies", type=float, nargs="+", default=[-1, 0.6, 0.7, 0.8, 0.9])
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
    pl = sub.add_parser("pile")
    pl.add_argument("--dir", required=True)
    pl.add_argument("--size", type=int, default=32)
    pl.add_argument("--steps", type=int, default=1500)
    pl.add_argument("--threshold", type=float, default=0.8)
    pl.add_argument("--verify", type=float, default=0.8)
    pl.add_argument("--fraction", type=float, default=0.6)
    pl.add_argument("--seed", type=int, default=0)
    pl.add_argument("--markdown", default=None)
    gen = sub.add_parser("gen")
    gen.add_argument("path")
    gen.add_argument("rows", type=int)
    gen.add_argument("dim", type=int)
    args = parser.parse_args(argv)
    if args.what == "gen":
        generate(Path(args.path), args.rows, args.dim, centres=5000)
        return 0
    text = {"threshold": run_threshold, "scale": run_scale, "pile": run_pile}[args.what](args)
    emit(text, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
