"""Data curation for SEER-style pretraining: embed a pile, drop duplicates, sample it balanced over clusters.

    bigseer embed SRC --weights W --out EMB     embed.py (items.py decode, store.py the directory format)
    bigseer dedup EMB --out KEEP                dedup.py (groups.py union-find)
    bigseer curate EMB --keep KEEP --out DIR    pipeline.py: hierarchy.py (k-means levels, kmeans.py faiss / torch
                                                over ranks), sampling.py (balanced), output.py (list / shards)
    bigseer curate SRC --weights W --out DIR    all three (pipeline.curate_pile)

Embeddings are read through :mod:`bigseer.curate.rows` block by block. docs/CURATION.md has the design and the
plan for 1e9 images.
"""

from __future__ import annotations

import logging
from typing import Any


def import_faiss() -> Any:
    """``import faiss`` without its INFO lines about which SIMD build it loaded."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss
