"""``bigseer scan DATA``: stream a source through decode + multi-crop once and report."""

from __future__ import annotations

import argparse

from bigseer.data.multicrop import DEFAULT_CROPS
from bigseer.data.render import DEFAULT_MIN_SIDE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="folder, path list, .tar shards (glob/brace), 'builtin', or several joined by ','")
    parser.add_argument("--limit", type=int, default=None, help="scan only the first N items (default: all)")
    parser.add_argument("--crops", default=DEFAULT_CROPS, help="multi-crop spec, e.g. 2x224+4x96 or 2x160+4x96")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0 = in process)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-side", type=int, default=DEFAULT_MIN_SIDE,
                        help="skip images whose shorter side is below this (reason too_small)")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="skip images with more pixels (reason too_large; default PIL's MAX_IMAGE_PIXELS)")


def run(args: argparse.Namespace) -> int:
    from bigseer.data.scan import scan_source

    result = scan_source(args.data, args.crops, limit=args.limit, num_workers=args.workers, seed=args.seed,
                         min_side=args.min_side, max_pixels=args.max_pixels)
    total_skipped = sum(result.skipped.values())
    print(f"source: {result.description}")
    print(f"decoded: {result.decoded}")
    print(f"skipped: {total_skipped}")
    for reason, count in result.skipped.items():
        print(f"  {reason}: {count}")
    print(f"time: {result.seconds:.2f} s")
    print(f"images/s: {result.images_per_s:.1f}")
    return 0
