"""Balanced hierarchical sampling: the same share of the budget for every branch of the cluster tree.

From the top level down, a node's budget is split evenly over its children by water-filling: children
smaller than the even share give all they have and the rest is shared again; the remainder of an integer
division goes to children picked with the seed. At level 1 a cluster's quota is drawn uniformly from its
rows. Everything is a function of ``(seed, level, node)``, so the same seed gives the same selection.
"""

from __future__ import annotations

import numpy as np

from bigseer.curate.hierarchy import Level
from bigseer.errors import ConfigError


def split_budget(sizes: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Take per child, ``sum == min(budget, sizes.sum())``, each ``<= size``, as even as possible."""
    sizes = np.asarray(sizes, dtype=np.int64)
    take = np.zeros_like(sizes)
    if budget >= sizes.sum():
        return sizes.copy()
    active = np.nonzero(sizes > 0)[0]
    remaining = int(budget)
    while len(active) and remaining > 0:
        share = remaining // len(active)
        full = active[sizes[active] <= share]
        if len(full) == 0:
            take[active] = share
            extra = remaining - share * len(active)
            take[rng.permutation(active)[:extra]] += 1
            break
        take[full] = sizes[full]
        remaining -= int(sizes[full].sum())
        active = active[sizes[active] > share]
    return take


def balanced_sample(levels: list[Level], allowed: np.ndarray, target: int, seed: int = 0) -> np.ndarray:
    """Sorted row numbers of a ``target``-row balanced sample of the rows marked ``allowed``."""
    if target < 1:
        raise ConfigError(f"curate: the target size must be >= 1, got {target}")
    row_labels = levels[0].labels
    sizes = [np.bincount(row_labels[allowed], minlength=levels[0].k).astype(np.int64)]
    for up in levels[1:]:
        sizes.append(np.bincount(up.labels, weights=sizes[-1], minlength=up.k).astype(np.int64))
    depth = len(levels)
    quotas = split_budget(sizes[-1], target, np.random.default_rng([seed, depth, 0]))
    for d in range(depth - 1, 0, -1):  # quotas of level d clusters -> quotas of their children at level d - 1
        parents = levels[d].labels  # parent (level d) of each level d - 1 cluster
        child_quota = np.zeros(levels[d - 1].k, dtype=np.int64)
        order = np.argsort(parents, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(parents, minlength=levels[d].k))])
        for p in np.nonzero(quotas)[0]:
            children = order[bounds[p]:bounds[p + 1]]
            child_quota[children] = split_budget(sizes[d - 1][children], int(quotas[p]),
                                                 np.random.default_rng([seed, d, int(p)]))
        quotas = child_quota
    rows = np.nonzero(allowed)[0]
    lab = row_labels[rows]
    order = np.argsort(lab, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(lab, minlength=levels[0].k))])
    picked = []
    for c in np.nonzero(quotas)[0]:
        members = rows[order[bounds[c]:bounds[c + 1]]]
        rng = np.random.default_rng([seed, 0, int(c)])
        picked.append(members if quotas[c] >= len(members) else rng.choice(members, int(quotas[c]), replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)
