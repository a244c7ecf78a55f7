"""``bigseer export CHECKPOINT_DIR --out DIR [--layout ...] [--dtype ...] [--max_shard_size 5GB] [--include_head]``."""

from __future__ import annotations

import argparse
import sys

from bigseer.commands.convert import MODEL_HELP
from bigseer.export.layouts import EXPORT_LAYOUTS
from bigseer.export.writer import DTYPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="training checkpoint: step dir, checkpoints/ dir (uses 'latest') or "
                                           "run output dir; any backend and world size (or any weights "
                                           "bigseer convert reads)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--layout", default="timm",
                        help=f"key layout: {' | '.join(EXPORT_LAYOUTS)} (default timm; detectron2 writes model.pth)")
    parser.add_argument("--dtype", default="fp32", help=f"floating-point dtype: {' | '.join(DTYPES)} (default fp32)")
    parser.add_argument("--max_shard_size", default="5GB",
                        help="shard above this size into model-0000K-of-0000N.safetensors + index (default 5GB)")
    parser.add_argument("--include_head", action="store_true", help="also export the SwAV head as head.*")
    parser.add_argument("--model", default=None, help=MODEL_HELP.replace("file's metadata", "checkpoint's meta"))


def run(args: argparse.Namespace) -> int:
    from bigseer.export.convert import parse_model_arg
    from bigseer.export.exporter import export_checkpoint, export_notes

    files = export_checkpoint(args.checkpoint, args.out, layout=args.layout, dtype=args.dtype,
                              max_shard_size=args.max_shard_size, include_head=args.include_head,
                              model=parse_model_arg(args.model))
    for f in files:
        print(f)
    for note in export_notes(args.out):
        print(f"bigseer export: note: {note}", file=sys.stderr)
    return 0
