"""``bigseer convert SRC --out DIR [--model PRESET] [--dtype fp32]``: timm / torchvision / HF / pycls /
VISSL-SEER weights into a bigseer trunk (timm-layout safetensors with the RegNet params)."""

from __future__ import annotations

import argparse

from bigseer.export.writer import DTYPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="weights file or directory (.safetensors, .pth, .pyth, VISSL .torch, HF dir)")
    parser.add_argument("--out", required=True, help="output directory (model.safetensors + export.json)")
    parser.add_argument("--model", default=None,
                        help="RegNetY preset (default: from the file's metadata, else inferred from shapes)")
    parser.add_argument("--dtype", default="fp32", help=f"floating-point dtype: {' | '.join(DTYPES)}")
    parser.add_argument("--max_shard_size", default="5GB", help="shard above this size (default 5GB)")


def run(args: argparse.Namespace) -> int:
    from bigseer.export.convert import convert_weights

    files = convert_weights(args.src, args.out, model=args.model, dtype=args.dtype,
                            max_shard_size=args.max_shard_size)
    for f in files:
        print(f)
    return 0
