"""``bigseer sample-data OUT [--count N] [--labeled]``: write the built-in images as files, to try every
command on real files offline: a folder of PNGs, or with ``--labeled`` an ImageFolder (``OUT/train/<class>/``,
``OUT/val/<class>/``, the builtin scene classes; every fifth image goes to val) for ``bigseer eval``."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder")
    parser.add_argument("--count", type=int, default=512, help="number of images (default 512)")
    parser.add_argument("--labeled", action="store_true", help="ImageFolder train/ and val/ by scene class")


def run(args: argparse.Namespace) -> int:
    import os

    from bigseer.data.builtin import builtin_image, builtin_label
    from bigseer.errors import ConfigError

    if args.count < 1:
        raise ConfigError(f"--count {args.count} must be >= 1")
    for i in range(args.count):
        if args.labeled:
            split = "val" if (i // 10) % 5 == 4 else "train"  # every fifth image of each class
            folder = os.path.join(args.out, split, f"class_{builtin_label(i)}")
        else:
            folder = args.out
        os.makedirs(folder, exist_ok=True)
        builtin_image(i).save(os.path.join(folder, f"{i:06d}.png"))
    print(f"{args.count} images in {args.out}" + (" (train/ and val/ by class)" if args.labeled else ""))
    return 0
