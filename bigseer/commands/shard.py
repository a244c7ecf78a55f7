"""``bigseer shard SRC OUT_PATTERN [--max_size 1GB]``: a folder or path list -> WebDataset tar shards + index.

Resumable: run the same command again after an interruption and it continues after the last complete shard."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="image folder (recursive) or a text file listing image paths")
    parser.add_argument("pattern", help="output shard names with one %%d field, e.g. /data/shards/shard-%%06d.tar")
    parser.add_argument("--max_size", default="1GB", help="bytes per shard at most (default 1GB)")
    parser.add_argument("--max_count", type=int, default=0, help="samples per shard at most (0: no limit)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bigseer.data.shard_writer import source_paths, write_shards

    total = len(source_paths(args.src))
    with tqdm(total=total, desc="shard", unit="img", disable=not sys.stderr.isatty()) as bar:
        result = write_shards(args.src, args.pattern, args.max_size, args.max_count, progress=bar.update)
    print(f"{len(result.shards)} shards, {result.samples} samples, index {result.index}")
    if result.skipped:
        print("skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(result.skipped.items())))
    return 0
