"""``bigseer shard SRC OUT_PATTERN [--max_size 1GB] [--max_side N] [--quality Q]``: a folder or path list ->
WebDataset tar shards + index.

Resumable: run the same command again after an interruption and it continues after the last complete shard.
``--max_side`` / ``--quality`` re-encode every image (EXIF orientation applied, longest side <= N, JPEG quality
Q); the index records it (see bigseer.data.shard_writer)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="image folder (recursive) or a text file listing image paths")
    parser.add_argument("pattern", help="output shard names with one %%d field, e.g. /data/shards/shard-%%06d.tar")
    parser.add_argument("--max_size", default="1GB", help="bytes per shard at most (default 1GB)")
    parser.add_argument("--max_count", type=int, default=0, help="samples per shard at most (0: no limit)")
    parser.add_argument("--max_side", type=int, default=None,
                        help="re-encode: longest side at most N px (EXIF orientation applied; default: store as is)")
    parser.add_argument("--quality", type=int, default=None,
                        help="re-encode: JPEG quality 1..100 (default 90 when --max_side is given)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bigseer.data.shard_writer import Reencode, source_paths, write_shards

    reencode = None
    if args.max_side is not None or args.quality is not None:  # checked before any file is read
        reencode = Reencode(args.max_side, 90 if args.quality is None else args.quality)
    total = len(source_paths(args.src))
    with tqdm(total=total, desc="shard", unit="img", disable=not sys.stderr.isatty()) as bar:
        result = write_shards(args.src, args.pattern, args.max_size, args.max_count, progress=bar.update,
                              reencode=reencode)
    note = f" (re-encoded: max side {reencode.max_side or 'kept'}, JPEG quality {reencode.quality}, " \
        "EXIF orientation applied)" if reencode else ""
    print(f"{len(result.shards)} shards, {result.samples} samples, index {result.index}{note}")
    if result.skipped:
        print("skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(result.skipped.items())))
    return 0
