"""``bigseer convert SRC --out DIR [--model PRESET|JSON] [--dtype fp32]``: timm / torchvision / HF / pycls /
VISSL-SEER weights into a bigseer trunk (timm-layout safetensors with the RegNet params)."""

from __future__ import annotations

import argparse
import sys

from bigseer.export.writer import DTYPES

MODEL_HELP = ("RegNetY preset, or a JSON dict of RegNetParams fields, e.g. "
              "'{\"depth\": 20, \"w0\": 368, \"wa\": 102.79, \"wm\": 2.05, \"group_width\": 496}' "
              "(default: from the file's metadata, else inferred from shapes)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="weights file or directory (.safetensors, .pth, .pyth, VISSL .torch, HF dir)")
    parser.add_argument("--out", required=True, help="output directory (model.safetensors + export.json)")
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument("--dtype", default="fp32", help=f"floating-point dtype: {' | '.join(DTYPES)}")
    parser.add_argument("--max_shard_size", default="5GB", help="shard above this size (default 5GB)")


def run(args: argparse.Namespace) -> int:
    from bigseer.export.convert import convert_weights, parse_model_arg
    from bigseer.export.exporter import export_notes

    files = convert_weights(args.src, args.out, model=parse_model_arg(args.model), dtype=args.dtype,
                            max_shard_size=args.max_shard_size)
    for f in files:
        print(f)
    for note in export_notes(args.out):
        print(f"bigseer convert: note: {note}", file=sys.stderr)
    return 0
