"""``bigseer curate EMB --out DIR``: hierarchical k-means on embeddings and a balanced sample of them, written as
the list ``bigseer pretrain --data`` reads (DIR/list.txt, or DIR/shards/index.json for tar members).

``bigseer curate SRC --weights W --out DIR`` runs embed -> dedup -> curate on a raw pile in one command."""

from __future__ import annotations

import argparse

from bigseer.curate.dedup import DEFAULT_THRESHOLD, DEFAULT_VERIFY


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="embeddings directory (`bigseer embed`), or a data source with --weights")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--keep", default=None,
                        help="dedup output directory (`bigseer dedup`): curate only the kept images")
    parser.add_argument("--target", type=int, default=None, help="images to select (default: --fraction of them)")
    parser.add_argument("--fraction", type=float, default=0.5, help="fraction to select when --target is not given")
    parser.add_argument("--levels", type=_ints, default=None,
                        help="clusters per level, decreasing, e.g. 1000,100,10 (default: images/50, then /5, 3 levels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--niter", type=int, default=20, help="k-means iterations per fit")
    parser.add_argument("--resample_steps", type=int, default=1, help="resampling re-fits per level (0: plain k-means)")
    parser.add_argument("--kmeans", default="auto", choices=("auto", "faiss", "torch"),
                        help="level-1 k-means: faiss (one process) or torch (any number of ranks); auto picks")
    parser.add_argument("--drop_clusters", type=_ints, default=[],
                        help="level-1 cluster ids to exclude (listed in report.md)")
    group = parser.add_argument_group("with --weights: embed and dedup a raw pile first")
    group.add_argument("--weights", default=None, help="trunk weights; makes SRC a data source")
    group.add_argument("--model", default=None)
    group.add_argument("--part_size", type=int, default=1024)
    group.add_argument("--batch_size", type=int, default=64)
    group.add_argument("--resize", type=int, default=256)
    group.add_argument("--crop", type=int, default=224)
    group.add_argument("--workers", type=int, default=0)
    group.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="near-duplicate cosine threshold")
    group.add_argument("--verify", type=float, default=DEFAULT_VERIFY, help="near-duplicate thumbnail correlation")


def run(args: argparse.Namespace) -> int:
    from bigseer.curate.pipeline import CurateConfig, curate_embeddings, curate_pile, is_embeddings_dir
    from bigseer.distributed import get_rank, init_distributed
    from bigseer.errors import ConfigError
    from bigseer.train_log import setup_logging

    init_distributed()
    setup_logging(get_rank())
    kwargs = dict(target=args.target, fraction=args.fraction, levels=args.levels, seed=args.seed, niter=args.niter,
                  resample_steps=args.resample_steps, kmeans=args.kmeans, drop_clusters=args.drop_clusters)
    if args.weights is not None:
        if args.keep is not None:
            raise ConfigError("curate: --keep applies to an embeddings directory; with --weights dedup runs itself")
        embed_kwargs = dict(model=args.model, part_size=args.part_size, batch_size=args.batch_size,
                            resize=args.resize, crop=args.crop, workers=args.workers)
        result = curate_pile(args.src, args.weights, args.out, embed_kwargs=embed_kwargs, threshold=args.threshold,
                             verify=args.verify, curate_kwargs=kwargs)
    elif is_embeddings_dir(args.src):
        result = curate_embeddings(CurateConfig(args.src, args.out, keep=args.keep, **kwargs))
    else:
        raise ConfigError(f"curate: {args.src} is not an embeddings directory (no manifest.json); give --weights W "
                          f"to embed it first, or run `bigseer embed` on it")
    if get_rank() == 0:
        r = result.report
        print(f"selected {r['selected']} of {r['after_dedup']} images (levels {r['levels']}); "
              f"pretrain with: bigseer pretrain --data {result.data}")
    return 0
