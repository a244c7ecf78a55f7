"""Start-up time and peak RSS of opening a tar-shard catalog + the first sample-position lookups vs image count
(issue 17).

Readers (each size and reader in a fresh subprocess, so peak RSS is its own; repeats interleaved):

  index     today's reader with a shard index: ``bigseer.data.open_source("<dir>/wids-index.json")`` (reads the
            index, stats 16 shards against it, probes 16 samples of the first shard for images), then
            ``GlobalOrder(catalog.shard_counts(), seed, lanes)`` and the lookups.
  walk      today's reader without an index: ``open_source("<dir>/shard-{000000..N}.tar")`` walks every shard's
            512-byte tar headers at start-up (no ``index.json`` beside the shards, so it does), then the same order.
  v0.1      bigseer 0.1's reader (``git show HEAD~8:bigseer/data/sources.py``, ``_TarPart`` / ``_index_tar``; the few
            lines are copied below, not restored into the package): Python ``tarfile`` iterates every member of every
            shard and a per-image table (shard id, offset, size) is built; its order was one keyed permutation over
            all images (``KeyedPermutation(n)``, as bigseer 0.1's ``SampleOrder``).
  index-synthetic  ``read_index`` + ``TarShards.from_index`` + ``GlobalOrder`` on a wids index of 10,000 samples per
            shard whose tar files do not exist (so no stat/probe of shards): up to 1e9 images (100,000 shards).

The lookups: the first ``--lookups`` global positions (one SEER-size step at ``--lanes`` lanes) mapped to (shard,
member); for ``index`` and ``walk`` on real shards also the first sample's bytes (opening one shard = walking its
headers). Sizes 1e4..1e6 are real tar shards of 10,000 samples each (``<key>.jpg`` members holding one small real
JPEG, ~1.5 KiB per member with headers and padding), written once under ``--dir`` and reused; they sit in the page
cache unless ``--cold`` evicts them (``posix_fadvise(DONTNEED)`` on each shard before every measured run, which
only drops this machine's cached pages of those files). ``walk`` and ``v0.1`` beyond the real sizes are linear
extrapolations from the measured per-image cost (labelled as such).

    .venv/bin/python benchmarks/bench_startup.py --out benchmarks/results/startup.md
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse
import io
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from memstat import status_kib  # noqa: E402  (benchmarks/memstat.py)
from report import emit, uptime  # noqa: E402  (benchmarks/report.py)

PER_SHARD = 10_000
READERS = ("index", "walk", "v0.1")


# -------------------------------------------------------------------------------------- bigseer 0.1 reader
# Copied from bigseer 0.1 (git show HEAD~8:bigseer/data/sources.py): _index_tar and the table of _TarPart.__init__.
# Its list of image extensions is the package's one list (bigseer.data.files, unchanged since 0.1), imported in the
# child after its timed imports of bigseer.data.


def _index_tar_v01(path: str) -> list[tuple[int, int]]:
    """(data offset, size) of one member per sample key, in tar order (bigseer 0.1)."""
    import tarfile

    from bigseer.data.files import IMAGE_EXTENSIONS

    by_key: dict[str, list[tuple[str, int, int]]] = {}
    with tarfile.open(path, "r:") as tf:
        try:
            for m in tf:
                if not m.isfile():
                    continue
                d, base = os.path.split(m.name)
                key, _, ext = base.partition(".")
                by_key.setdefault(os.path.join(d, key), []).append((ext.lower(), m.offset_data, m.size))
        except (tarfile.TarError, EOFError, OSError):
            pass
    out = []
    for members in by_key.values():
        pick = next((m for m in members if m[0].rsplit(".", 1)[-1] in IMAGE_EXTENSIONS), members[0])
        out.append((pick[1], pick[2]))
    return out


def open_v01(shards: list[str]):
    """bigseer 0.1's ``_TarPart`` table: one row per image (shard id int32, offset int64, size int64)."""
    import numpy as np

    idx, offsets, sizes = [], [], []
    for s, shard in enumerate(shards):
        for off, size in _index_tar_v01(shard):
            idx.append(s)
            offsets.append(off)
            sizes.append(size)
    return (np.asarray(idx, dtype=np.int32), np.asarray(offsets, dtype=np.int64), np.asarray(sizes, dtype=np.int64))


# --------------------------------------------------------------------------------------------- data sets
def tiny_jpeg() -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=75)
    return buf.getvalue()


def shard_names(n_shards: int) -> list[str]:
    return [f"shard-{k:06d}.tar" for k in range(n_shards)]


def make_real(root: str, images: int) -> str:
    """``images // 10,000`` tar shards of 10,000 one-member samples + ``wids-index.json`` (not ``index.json``, so the
    header-walk reader does not pick it up). Reused when complete."""
    import tarfile

    from bigseer.data.shard_index import ShardEntry, write_index

    d = os.path.join(root, f"real-{images}")
    index = os.path.join(d, "wids-index.json")
    if os.path.exists(index):
        return d
    os.makedirs(d, exist_ok=True)
    payload = tiny_jpeg()
    entries = []
    for k, name in enumerate(shard_names(images // PER_SHARD)):
        path = os.path.join(d, name)
        with tarfile.open(path + ".tmp", "w", format=tarfile.USTAR_FORMAT) as tf:
            for i in range(PER_SHARD):
                info = tarfile.TarInfo(f"{k:06d}{i:05d}.jpg")
                info.size, info.mtime, info.mode = len(payload), 1_700_000_000, 0o644
                tf.addfile(info, io.BytesIO(payload))
        os.replace(path + ".tmp", path)
        entries.append(ShardEntry(path, PER_SHARD, os.path.getsize(path)))
    write_index(index, entries, name=f"real-{images}")
    return d


def make_synthetic(root: str, images: int) -> str:
    """A wids index of ``images // 10,000`` shards x 10,000 samples; the tar files do not exist."""
    from bigseer.data.shard_index import ShardEntry, write_index

    d = os.path.join(root, f"synthetic-{images}")
    index = os.path.join(d, "wids-index.json")
    if not os.path.exists(index):
        os.makedirs(d, exist_ok=True)
        size = 512 + PER_SHARD * 1536 + 1024  # what make_real's shards weigh
        write_index(index, (ShardEntry(os.path.join(d, name), PER_SHARD, size)
                            for name in shard_names(images // PER_SHARD)), name=f"synthetic-{images}")
    return d


def evict(d: str) -> None:
    for name in os.listdir(d):
        if name.endswith(".tar"):
            fd = os.open(os.path.join(d, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# ------------------------------------------------------------------------------------------------ child
def child(args: argparse.Namespace) -> None:
    """One measurement in this fresh process; prints one JSON line."""
    t_py = T_START
    import numpy as np

    from bigseer.data import open_source
    from bigseer.data.order import GlobalOrder, KeyedPermutation, key_of
    from bigseer.data.shard_index import read_index
    from bigseer.data.tar_shards import TarShards

    t_imp = time.perf_counter()
    rss_imp = status_kib("VmRSS")
    d, reader, lookups = args.data, args.reader, args.lookups
    n_shards = args.images // PER_SHARD
    first_read = None
    t0 = time.perf_counter()
    if reader == "index":
        catalog = open_source(os.path.join(d, "wids-index.json"))
        counts, part = catalog.shard_counts(), catalog.parts[0]
    elif reader == "index-synthetic":
        index = os.path.join(d, "wids-index.json")
        part = TarShards.from_index(index, read_index(index), index)
        counts = part.shard_counts()
    elif reader == "walk":
        catalog = open_source(os.path.join(d, f"shard-{{000000..{n_shards - 1:06d}}}.tar"))
        counts, part = catalog.shard_counts(), catalog.parts[0]
    elif reader == "v0.1":
        table = open_v01([os.path.join(d, name) for name in shard_names(n_shards)])
    else:
        raise SystemExit(f"unknown reader {reader}")
    t_open = time.perf_counter()
    out = []
    if reader == "v0.1":  # bigseer 0.1's order: one keyed permutation of all images, then the table row
        n = len(table[0])
        perm = KeyedPermutation(n, key_of(0, 0))
        for p in range(lookups):
            i = perm(p)
            out.append((int(table[0][i]), int(table[1][i])))
    else:
        order = GlobalOrder(counts, 0, args.lanes)
        for p in range(lookups):
            out.append(order.locate(p))
    t_look = time.perf_counter()
    if reader in ("index", "walk"):  # the first sample's bytes: opens its shard (walks that shard's headers)
        shard, member = out[0]
        first_read = len(part.read(int(part.starts[shard]) + member))
    t_read = time.perf_counter()
    assert len(out) == lookups and (reader == "v0.1" or len({s for s, _ in out}) > 0)
    print(json.dumps({"reader": reader, "images": args.images, "shards": n_shards, "python_imports_s": t_imp - t_py,
                      "open_s": t_open - t0, "lookups_s": t_look - t_open, "first_read_s": t_read - t_look,
                      "first_read_bytes": first_read, "total_s": t_read - t0, "rss_after_imports_mib": rss_imp / 1024,
                      "peak_rss_mib": status_kib("VmHWM") / 1024, "distinct_shards": len({s for s, _ in out}),
                      "np": np.__version__}))


# --------------------------------------------------------------------------------------------- launcher
def measure(args: argparse.Namespace, reader: str, images: int, data: str) -> dict:
    if args.cold and reader != "index-synthetic":
        evict(data)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--reader", reader, "--images", str(images),
           "--data", data, "--lookups", str(args.lookups), "--lanes", str(args.lanes)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"child failed: {' '.join(cmd)}")
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    rec["process_wall_s"] = wall
    rec["load1"] = os.getloadavg()[0]
    return rec


def fmt_n(n: float) -> str:
    e = len(str(int(n))) - 1
    return f"1e{e}" if int(n) == 10 ** e else f"{n:g}"


def report(args: argparse.Namespace, recs: list[dict], before: str, after: str, made: dict) -> str:
    def cell(reader: str, images: int, key: str) -> float | None:
        vals = [r[key] for r in recs if r["reader"] == reader and r["images"] == images]
        return statistics.median(vals) if vals else None

    real, synth = args.real, args.synthetic
    lines = ["## Start-up vs image count: opening a tar-shard catalog + first lookups (issue 17)", "",
             "Command (repo root, 2-core CPU machine shared with other engineers):", "",
             "    .venv/bin/python benchmarks/bench_startup.py " + " ".join(sys.argv[1:]), "",
             (f"Each (reader, size) in a fresh subprocess, {args.repeats} repeats interleaved, medians. 10,000 samples per "
              f"shard everywhere. Real sets: {', '.join(fmt_n(n) for n in real)} images as tar shards of one-member "
              f"samples (a {made['jpeg_bytes']}-byte real JPEG each; {made['shard_mib']:.1f} MiB per shard) under "
              f"`{args.dir}`, page cache: {'evicted before every run (--cold)' if args.cold else 'warm (files read before)'}."
              f" Lookups: the first {args.lookups} global positions at {args.lanes} lanes."),
             f"`uptime` before: `{before}`", f"`uptime` after: `{after}`", "",
             ("Time to a usable catalog + order (open + lookups + first sample read where there are files), seconds, and "
             "peak RSS of the process (MiB; after imports in brackets: what the catalog itself adds is the difference):"),
             "", ("| images | shards | index (today) | index, synthetic (no tar files) | header walk, no index (today) | "
             "bigseer 0.1 (tarfile, per-image table) |"), "|---:|---:|---|---|---|---|"]
    sizes = sorted(set(real) | set(synth))
    slope = {}  # per image, between the two largest measured real sizes: (s, MiB of RSS growth, from n, its s, its MiB)
    for reader in ("walk", "v0.1"):
        meas = sorted(n for n in real if cell(reader, n, "total_s") is not None)
        if len(meas) >= 2:
            n1, n2 = meas[-2], meas[-1]
            grow = {n: cell(reader, n, "peak_rss_mib") - cell(reader, n, "rss_after_imports_mib") for n in (n1, n2)}
            slope[reader] = ((cell(reader, n2, "total_s") - cell(reader, n1, "total_s")) / (n2 - n1),
                             (grow[n2] - grow[n1]) / (n2 - n1), n2, cell(reader, n2, "total_s"), grow[n2])
    for n in sizes:
        row = [fmt_n(n), f"{n // PER_SHARD:,}"]
        for reader in ("index", "index-synthetic", "walk", "v0.1"):
            t = cell(reader, n, "total_s")
            if t is not None:
                row.append(f"{t:.3f} s, {cell(reader, n, 'peak_rss_mib'):.0f} "
                           f"({cell(reader, n, 'rss_after_imports_mib'):.0f}) MiB")
            elif reader in slope and n > slope[reader][2]:
                s_img, m_img, n2, t2, g2 = slope[reader]
                row.append(f"*extrapolated: ~{fmt_t(t2 + s_img * (n - n2))}, +{fmt_m(g2 + m_img * (n - n2))}*")
            else:
                row.append("-")
        lines.append("| " + " | ".join(row) + " |")
    ex = "; ".join(f"{r}: {1e6 * v[0]:.2f} us and {v[1] * 2 ** 20:.1f} bytes per image" for r, v in slope.items())
    lines += ["", ("*Extrapolated* cells are not measured: time and RSS growth (peak minus after-imports) continued "
                   "linearly from the largest measured real size with the per-image slope between the two largest "
                   f"measured sizes ({ex})."), "",
              ("Split of the measured runs (median seconds: open / lookups / first sample read; Python start + imports "
              "of the child apart):"), "",
              "| reader | images | imports | open | lookups | first read | distinct shards in the lookups |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for reader in ("index", "index-synthetic", "walk", "v0.1"):
        for n in sizes:
            if cell(reader, n, "open_s") is None:
                continue
            lines.append(f"| {reader} | {fmt_n(n)} | {cell(reader, n, 'python_imports_s'):.2f} | "
                         f"{cell(reader, n, 'open_s'):.4f} | {cell(reader, n, 'lookups_s'):.4f} | "
                         f"{cell(reader, n, 'first_read_s'):.4f} | {cell(reader, n, 'distinct_shards'):.0f} |")
    lines += ["", "Per run:", "", "| reader | images | total s | peak RSS MiB | process wall s | load (1 min) |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in recs:
        lines.append(f"| {r['reader']} | {fmt_n(r['images'])} | {r['total_s']:.3f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['process_wall_s']:.2f} | {r['load1']:.2f} |")
    lines.append("")
    return "\n".join(lines)


def fmt_t(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def fmt_m(mib: float) -> str:
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--synthetic", type=int, nargs="+",
                    default=[10_000, 100_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000])
    ap.add_argument("--walk_max", type=int, default=1_000_000, help="largest size the walk / v0.1 readers run on")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lookups", type=int, default=4096)
    ap.add_argument("--lanes", type=int, default=4096)
    ap.add_argument("--dir", default="/tmp/bigseer-bench-startup")
    ap.add_argument("--cold", action="store_true", help="evict the shards from the page cache before every run")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--reader", help=argparse.SUPPRESS)
    ap.add_argument("--images", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0
    sys.path.insert(0, ROOT)
    t0 = time.perf_counter()
    real_dirs = {n: make_real(args.dir, n) for n in args.real}
    synth_dirs = {n: make_synthetic(args.dir, n) for n in args.synthetic}
    shard = os.path.join(real_dirs[min(args.real)], "shard-000000.tar") if args.real else None
    made = {"jpeg_bytes": len(tiny_jpeg()), "shard_mib": os.path.getsize(shard) / 2 ** 20 if shard else 0.0}
    print(f"data ready in {time.perf_counter() - t0:.1f} s under {args.dir}", flush=True)
    before = uptime()
    print(before, flush=True)
    recs = []
    jobs = [(r, n, real_dirs[n]) for n in args.real for r in READERS if r == "index" or n <= args.walk_max]
    jobs += [("index-synthetic", n, synth_dirs[n]) for n in args.synthetic]
    for rep in range(args.repeats):
        shift = rep % len(jobs)
        for reader, n, d in jobs[shift:] + jobs[:shift]:
            rec = measure(args, reader, n, d)
            recs.append(rec)
            print(f"  repeat {rep} {reader:15s} {fmt_n(n):>4s}: total {rec['total_s']:.3f} s (open {rec['open_s']:.3f}, "
                  f"lookups {rec['lookups_s']:.3f}, first read {rec['first_read_s']:.3f}), peak RSS "
                  f"{rec['peak_rss_mib']:.0f} MiB (after imports {rec['rss_after_imports_mib']:.0f}), "
                  f"load {rec['load1']:.2f}", flush=True)
    after = uptime()
    text = report(args, recs, before, after, made)
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
