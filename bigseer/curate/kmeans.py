"""k-means for curation: faiss on one process, or plain torch over ranks for piles that do not fit one machine.

Both fit on :class:`~bigseer.curate.rows.Rows` and assign every row in blocks (memory: one block plus the
centroids, plus the ``n`` labels and distances returned).

``faiss``: ``faiss.Kmeans`` (Lloyd, seeded, empty clusters split) on the rows given, assignment with an
exact ``IndexFlatL2``.

``torch``: Lloyd iterations with ``torch.distributed``. Rows are cut in global blocks of ``block`` rows and
rank ``r`` of ``W`` owns blocks ``r, r + W, ...``; each rank assigns its blocks and sums its rows per centroid,
sums and counts are all-reduced. Sums are exact: float16 values times 2**24 are integers, summed in int64
(order-free), so a fit on W ranks equals the fit on 1 rank bit for bit. The initial centroids are ``k``
rows drawn with ``seed`` from all ``n``; the rank owning each one contributes it to an all-reduce (a
broadcast that needs no extra collective). An empty cluster keeps its centroid.
"""

from __future__ import annotations

import numpy as np
import torch

from bigseer.curate import import_faiss
from bigseer.curate.rows import ArrayRows, Rows, iter_blocks
from bigseer.distributed import all_reduce_sum, get_rank, get_world_size
from bigseer.errors import ConfigError

BACKENDS = ("auto", "faiss", "torch")
FIXED = float(2 ** 24)  # float16 * 2**24 is an integer: exact, order-free sums
TORCH_BLOCK = 16384


def _check_k(k: int, n: int) -> None:
    if k < 1 or k > n:
        raise ConfigError(f"k-means: k={k} must be between 1 and the number of points ({n})")


def faiss_fit(x: np.ndarray, k: int, niter: int = 20, seed: int = 0, init: np.ndarray | None = None) -> np.ndarray:
    """Centroids ``[k, d]`` (float32) of the points ``x`` (deterministic for ``seed``)."""
    faiss = import_faiss()

    x = np.ascontiguousarray(x, dtype=np.float32)
    _check_k(k, len(x))
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False, min_points_per_centroid=1,
                      max_points_per_centroid=max(1, -(-len(x) // k)))
    km.train(x, init_centroids=None if init is None else np.ascontiguousarray(init, dtype=np.float32))
    return np.array(km.centroids, dtype=np.float32)


def faiss_assign(rows: Rows, centroids: np.ndarray, block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (int32) and squared distance (float32) of every row."""
    faiss = import_faiss()

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    labels = np.empty(rows.n, dtype=np.int32)
    dist = np.empty(rows.n, dtype=np.float32)
    for start, x in iter_blocks(rows, block):
        d, i = index.search(x, 1)
        labels[start:start + len(x)] = i[:, 0]
        dist[start:start + len(x)] = d[:, 0]
    return labels, dist


def _my_blocks(n: int, block: int) -> range:
    return range(get_rank(), -(-n // block), get_world_size())


def _nearest(x: torch.Tensor, c: torch.Tensor, c2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = (x * x).sum(1, keepdim=True) + c2[None, :] - 2.0 * (x @ c.T)
    dist, lab = d.min(dim=1)
    return lab, dist.clamp_min_(0)


def torch_assign(rows: Rows, centroids: np.ndarray, block: int = TORCH_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Labels and squared distances of all rows, computed over the ranks' blocks and gathered on every rank."""
    c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32))
    c2 = (c * c).sum(1)
    labels = torch.zeros(rows.n, dtype=torch.int64)
    dist = torch.zeros(rows.n, dtype=torch.float32)
    for start, x in iter_blocks(rows, block, _my_blocks(rows.n, block)):
        lab, d = _nearest(torch.from_numpy(x), c, c2)
        labels[start:start + len(x)] = lab
        dist[start:start + len(x)] = d
    labels = all_reduce_sum(labels)  # every row is non-zero on one rank only: exact
    dist = all_reduce_sum(dist)
    return labels.numpy().astype(np.int32), dist.numpy()


def torch_fit(rows: Rows, k: int, niter: int = 20, seed: int = 0, init: np.ndarray | None = None,
              block: int = TORCH_BLOCK) -> np.ndarray:
    """Centroids ``[k, d]`` (float32), identical on every rank and for every world size (module docstring)."""
    _check_k(k, rows.n)
    d = rows.dim
    mine = _my_blocks(rows.n, block)
    if init is None:
        picks = np.sort(np.random.default_rng([seed, 0xC0DE]).choice(rows.n, size=k, replace=False))
        c = torch.zeros(k, d, dtype=torch.float32)
        owned = [j for j, p in enumerate(picks) if (p // block) % get_world_size() == get_rank()]
        if owned:
            c[owned] = torch.from_numpy(rows.take(picks[owned]).astype(np.float32))
        c = all_reduce_sum(c)
    else:
        c = torch.from_numpy(np.array(init, dtype=np.float32))
    for _ in range(niter):
        c2 = (c * c).sum(1)
        sums = torch.zeros(k, d, dtype=torch.int64)
        counts = torch.zeros(k, dtype=torch.int64)
        for _, x in iter_blocks(rows, block, mine):
            xt = torch.from_numpy(x)
            lab, _ = _nearest(xt, c, c2)
            sums.index_add_(0, lab, (xt.to(torch.float16).double() * FIXED).round().long())
            counts += torch.bincount(lab, minlength=k)
        sums, counts = all_reduce_sum(sums), all_reduce_sum(counts)
        filled = counts > 0
        c = c.clone()
        c[filled] = (sums[filled].double() / FIXED / counts[filled, None].double()).float()
    return c.numpy()


def resolve_backend(backend: str) -> str:
    """``auto``: torch when several ranks run, faiss otherwise."""
    if backend not in BACKENDS:
        raise ConfigError(f"k-means backend {backend!r} must be one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "torch" if get_world_size() > 1 else "faiss"
    if backend == "faiss" and get_world_size() > 1:
        raise ConfigError("k-means backend faiss runs on one process; use --kmeans torch (or auto) under torchrun")
    return backend


def fit(rows: Rows, k: int, backend: str, niter: int, seed: int, init: np.ndarray | None = None) -> np.ndarray:
    """Centroids of ``rows`` with the chosen backend (``faiss`` reads all ``rows`` into memory: give it a sample)."""
    if backend == "torch":
        return torch_fit(rows, k, niter, seed, init)
    return faiss_fit(rows.read(0, rows.n), k, niter, seed, init)


def assign(rows: Rows, centroids: np.ndarray, backend: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and squared distances of every row of ``rows``."""
    return torch_assign(rows, centroids) if backend == "torch" else faiss_assign(rows, centroids)


def points(array: np.ndarray) -> ArrayRows:
    """In-memory points (e.g. a level's centroids) as Rows."""
    return ArrayRows(np.ascontiguousarray(array, dtype=np.float32))
