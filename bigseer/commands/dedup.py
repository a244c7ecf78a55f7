"""``bigseer dedup EMB --out KEEP``: exact (same sha1) and near (cosine >= threshold) duplicates of embedded
images; keeps one image per group. Writes KEEP/keep.npy (for ``bigseer curate EMB --keep KEEP``), groups.jsonl,
list.txt (kept files, for ``bigseer pretrain --data``), report.json / report.md / groups.png."""

from __future__ import annotations

import argparse

from bigseer.curate.dedup import DEFAULT_THRESHOLD, DEFAULT_VERIFY


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("embeddings", help="embeddings directory written by `bigseer embed`")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help=f"cosine similarity at or above which two images are near duplicates "
                             f"(default {DEFAULT_THRESHOLD}, measured in benchmarks/results/curate.md)")
    parser.add_argument("--verify", type=float, default=DEFAULT_VERIFY,
                        help=f"near pairs must also have 16x16 grey thumbnails correlating at least this much "
                             f"(default {DEFAULT_VERIFY}; -1: trunk cosine only)")
    parser.add_argument("--method", default="auto", choices=("auto", "range", "knn"),
                        help="range: every pair (CPU); knn: --knn nearest per image (GPU); auto: range, knn on GPU")
    parser.add_argument("--knn", type=int, default=32, help="neighbours per image for --method knn")
    parser.add_argument("--block", type=int, default=4096, help="query rows per faiss call (bounds memory)")


def run(args: argparse.Namespace) -> int:
    from bigseer.curate.dedup import DedupConfig, find_duplicates, write_dedup
    from bigseer.curate.store import EmbeddingStore
    from bigseer.train_log import setup_logging

    setup_logging(0)
    cfg = DedupConfig(args.embeddings, args.out, args.threshold, args.verify, args.method, args.knn, args.block)
    cfg.validate()
    store = EmbeddingStore(args.embeddings)
    result = find_duplicates(store, cfg)
    out = write_dedup(store, result, args.out)
    r = result.report
    print(f"kept {r['kept']} of {r['rows']}: removed {r['removed_exact_copies']} exact and {r['removed_near_copies']} "
          f"near copies in {r['groups']} groups (cosine >= {r['threshold']}, thumbnails >= {r['verify']}); "
          f"report {out / 'report.md'}")
    return 0
