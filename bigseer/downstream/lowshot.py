"""Low-shot subsets: a class-balanced, deterministic fraction of the training images *and* labels.

Every class keeps ``floor(fraction * n_class)`` images chosen by a seeded permutation of that class's
(sorted) images; the rest of the training set is never read. This mirrors the 1% / 10% ImageNet
subsets of SimCLR/SwAV/SEER, which sample each class at the same rate.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch

from bigseer.errors import ConfigError, DataError

# floor() with a tolerance, so 0.1 * 30 counts as 3 and not 2.9999999999999996 -> 2
_EPS = 1e-9


def per_class_counts(targets: Sequence[int], fraction: float) -> dict[int, int]:
    """How many images each class keeps: ``floor(fraction * n_class)``."""
    counts: dict[int, int] = defaultdict(int)
    for t in targets:
        counts[int(t)] += 1
    return {c: int(fraction * n + _EPS) for c, n in sorted(counts.items())}


def balanced_subset(targets: Sequence[int], fraction: float, seed: int = 0,
                    class_names: Sequence[str] | None = None) -> list[int]:
    """Sorted indices of a class-balanced ``fraction`` of ``targets`` (same seed -> same subset).

    Raises ConfigError for a fraction outside (0, 1] and DataError when the fraction leaves a class with
    no image (naming the class and the smallest fraction that would keep one).
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"low-shot fraction must be in (0, 1], got {fraction}")
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(targets):
        by_class[int(t)].append(i)
    keep = per_class_counts(targets, fraction)
    empty = [c for c, k in keep.items() if k == 0]
    if empty:
        c = empty[0]
        name = class_names[c] if class_names is not None else str(c)
        n = len(by_class[c])
        raise DataError(f"low-shot fraction {fraction} leaves class {name!r} empty ({n} training images; "
                        f"a fraction >= {1.0 / n:.4g} keeps at least one per class)")
    chosen: list[int] = []
    for c in sorted(by_class):
        g = torch.Generator().manual_seed(seed * 1_000_003 + c)
        perm = torch.randperm(len(by_class[c]), generator=g)[: keep[c]].tolist()
        chosen.extend(by_class[c][j] for j in perm)
    return sorted(chosen)
