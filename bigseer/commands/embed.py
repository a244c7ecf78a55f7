"""``bigseer embed SRC --weights W --out DIR``: pooled, L2-normalised float16 embeddings of every image of a pile.

Resumable (committed parts are never recomputed) and world-size-free: ``torchrun --nproc_per_node N -m bigseer
embed ...`` deals the parts over N ranks. The embeddings feed ``bigseer dedup`` and ``bigseer curate``."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="folder, path list, .tar shards (glob/brace), shard index, URL or 'builtin'")
    parser.add_argument("--weights", required=True,
                        help="trunk weights: a bigseer export / checkpoint dir, timm / torchvision / HF / SEER file")
    parser.add_argument("--out", required=True, help="embeddings directory (created; resumed when it exists)")
    parser.add_argument("--model", default=None, help="RegNetY preset, only when the weights do not say")
    parser.add_argument("--part_size", type=int, default=1024, help="catalog items per committed part (default 1024)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--resize", type=int, default=256, help="short side before the centre crop (default 256)")
    parser.add_argument("--crop", type=int, default=224, help="centre crop side (default 224)")
    parser.add_argument("--layer", default="res5", choices=("res4", "res5"), help="pooled stage (default res5)")
    parser.add_argument("--workers", type=int, default=0, help="decoding worker processes (0: in process)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--min_side", type=int, default=16, help="skip images whose short side is smaller (too_small)")
    parser.add_argument("--max_pixels", type=int, default=None, help="skip images with more pixels (too_large)")


def config_from_args(args: argparse.Namespace):
    from bigseer.curate.embed import EmbedConfig

    return EmbedConfig(source=args.data, weights=args.weights, out=args.out, model=args.model,
                       part_size=args.part_size, batch_size=args.batch_size, resize=args.resize, crop=args.crop,
                       layer=args.layer, workers=args.workers, device=args.device, min_side=args.min_side,
                       max_pixels=args.max_pixels)


def run(args: argparse.Namespace) -> int:
    from bigseer.curate.embed import embed_source
    from bigseer.data import format_skipped
    from bigseer.distributed import get_rank, init_distributed
    from bigseer.train_log import setup_logging

    init_distributed()
    setup_logging(get_rank())
    result = embed_source(config_from_args(args))
    if get_rank() == 0:
        print(f"embedded {result.embedded} images in {len(result.parts_computed)} parts on rank 0 "
              f"({result.images_per_s:.1f} images/s); {result.parts_before} of {result.parts} parts were committed "
              f"before; {format_skipped(result.skipped)}; embeddings in {result.root}")
    return 0
