"""Hierarchical k-means with resampling (the idea of Vo et al. 2024, "Automatic Data Curation for
Self-Supervised Learning"; written from the paper's description, not its code).

Level 1 clusters the embeddings into ``k1`` clusters, level 2 clusters the ``k1`` centroids into ``k2 < k1``,
and so on. Plain k-means puts most centroids where the data is dense (duplicates-heavy, head concepts);
after each level's fit, ``resample_steps`` rounds re-fit the centroids on an equal share of every cluster
(its ``r`` points nearest to the centroid, ``r`` = the median cluster size unless given), which moves
centroids towards the sparse regions, and the points are assigned again. The balanced sampler
(:mod:`bigseer.curate.sampling`) then draws the same number of images from each branch of the tree.

Level 1 fits on a seeded sample of at most ``sample_per_centroid * k1`` rows and assigns every row in
blocks; its backend is faiss (one process) or torch (any number of ranks, :mod:`bigseer.curate.kmeans`).
Upper levels cluster centroids (small) with faiss on every rank alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from bigseer.curate import kmeans
from bigseer.curate.rows import Rows, TakeRows
from bigseer.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Level:
    """One level: ``centroids [k, d]``; ``labels`` / ``dist`` of the points below (rows for level 1, the
    previous level's centroids above)."""

    k: int
    centroids: np.ndarray
    labels: np.ndarray
    dist: np.ndarray


def auto_levels(n: int, levels: int = 3, per_cluster: int = 50, ratio: int = 5) -> list[int]:
    """Default ``k`` per level for ``n`` rows: ``n / per_cluster`` at level 1, then ``/ ratio`` per level (>= 2)."""
    ks = [max(1, min(n, max(2, n // per_cluster)))]
    while len(ks) < levels and ks[-1] // ratio >= 2:
        ks.append(ks[-1] // ratio)
    return ks


def check_levels(ks: list[int], n: int) -> None:
    if not ks or any(k < 1 for k in ks) or any(b >= a for a, b in zip(ks, ks[1:])):
        raise ConfigError(f"--levels {','.join(map(str, ks))}: give decreasing cluster counts >= 1, e.g. 1000,100,10")
    if ks[0] > n:
        raise ConfigError(f"--levels: {ks[0]} clusters at level 1 but only {n} images")


def resampled(labels: np.ndarray, dist: np.ndarray, k: int, r: int | None) -> np.ndarray:
    """Indices of the ``r`` points nearest to their centroid in every cluster (all of smaller clusters)."""
    sizes = np.bincount(labels, minlength=k)
    if r is None:
        r = max(1, int(np.median(sizes[sizes > 0])))
    order = np.lexsort((np.arange(len(labels)), dist, labels))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank_in = np.arange(len(labels)) - np.repeat(starts, sizes)
    return np.sort(order[rank_in < r])


def _level(rows: Rows, k: int, backend: str, niter: int, seed: int, resample_steps: int, resample_size: int | None,
           sample_cap: int) -> Level:
    rng = np.random.default_rng([seed, 0x1E7E1, k])
    train: Rows = rows
    if rows.n > sample_cap:
        train = TakeRows(rows, np.sort(rng.choice(rows.n, sample_cap, replace=False)))
    centroids = kmeans.fit(train, k, backend, niter, seed)
    labels, dist = kmeans.assign(rows, centroids, backend)
    for step in range(resample_steps):
        picked = resampled(labels, dist, k, resample_size)
        if len(picked) > sample_cap:
            picked = np.sort(rng.choice(picked, sample_cap, replace=False))
        centroids = kmeans.fit(TakeRows(rows, picked), k, backend, niter, seed + 1 + step, init=centroids)
        labels, dist = kmeans.assign(rows, centroids, backend)
    return Level(k, centroids, labels, dist)


def hierarchical_kmeans(rows: Rows, ks: list[int], *, seed: int = 0, niter: int = 20, resample_steps: int = 1,
                        resample_size: int | None = None, backend: str = "auto",
                        sample_per_centroid: int = 256) -> list[Level]:
    """The levels of the hierarchy, finest first (module docstring). Deterministic for ``seed``."""
    check_levels(ks, rows.n)
    backend = kmeans.resolve_backend(backend)
    out: list[Level] = []
    current: Rows = rows
    for depth, k in enumerate(ks):
        level_backend = backend if depth == 0 else "faiss"
        level = _level(current, k, level_backend, niter, seed + 1000 * depth, resample_steps,
                       resample_size if depth == 0 else None, sample_per_centroid * k)
        sizes = np.bincount(level.labels, minlength=k)
        log.info("curate: level %d: %d clusters of %d points (sizes %d..%d, median %d)", depth + 1, k, current.n,
                 sizes.min(), sizes.max(), int(np.median(sizes)))
        out.append(level)
        current = kmeans.points(level.centroids)
    return out
