"""``bigseer index SHARDS [--out PATH]``: write the shard index (wids format) that start-up reads instead of
walking every tar header (O(shards) start-up for a billion images)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", help="tar shards: a path, glob or brace pattern, or URLs (http(s)://, s3://, gs://)")
    parser.add_argument("--out", default=None, help="index file (default: index.json beside local shards)")


def run(args: argparse.Namespace) -> int:
    import glob
    import os

    from tqdm import tqdm

    from bigseer.data.shard_index import is_url, write_index
    from bigseer.data.shard_writer import default_index_path, index_shards
    from bigseer.data.sources import expand_braces
    from bigseer.errors import DataError

    urls = expand_braces(args.shards)
    if not is_url(args.shards):
        urls = sorted({m for u in urls for m in glob.glob(os.path.expanduser(u))})
    urls = [u for u in urls if u.lower().endswith(".tar")]
    if not urls:
        raise DataError(f"{args.shards!r} names no .tar shards")
    out = args.out or default_index_path(urls)
    with tqdm(total=len(urls), desc="index", unit="shard", disable=not sys.stderr.isatty()) as bar:
        entries = index_shards(urls, progress=bar.update)
    path = write_index(out, entries)
    print(f"{path}: {len(entries)} shards, {sum(e.nsamples for e in entries)} samples")
    return 0
