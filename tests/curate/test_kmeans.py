"""k-means, hierarchy and balanced sampling: determinism, 2 ranks == 1 rank, balance."""

from __future__ import annotations

import numpy as np
import pytest

from bigseer.curate.hierarchy import auto_levels, hierarchical_kmeans, resampled
from bigseer.curate.kmeans import faiss_assign, faiss_fit, torch_assign
from bigseer.curate.rows import ArrayRows
from bigseer.curate.sampling import balanced_sample, split_budget
from bigseer.errors import ConfigError


def blobs(n_per: list[int], dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm float16 points around len(n_per) random centres, with those cluster sizes (long tail)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(n_per), dim))
    x = np.concatenate([c + 0.15 * rng.normal(size=(m, dim)) for c, m in zip(centres, n_per)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16), np.repeat(np.arange(len(n_per)), n_per)


def test_faiss_kmeans_is_deterministic_and_assignment_is_nearest():
    x, _ = blobs([200, 50, 10], seed=2)
    a = faiss_fit(x.astype(np.float32), 3, niter=10, seed=5)
    b = faiss_fit(x.astype(np.float32), 3, niter=10, seed=5)
    assert np.array_equal(a, b)
    labels, dist = faiss_assign(ArrayRows(x), a, block=37)
    brute = ((x.astype(np.float32)[:, None, :] - a[None]) ** 2).sum(-1)
    assert np.array_equal(labels, brute.argmin(1))
    np.testing.assert_allclose(dist, brute.min(1), atol=1e-4)
    t_labels, _ = torch_assign(ArrayRows(x), a, block=50)
    assert np.array_equal(t_labels, labels)


def test_split_budget_is_even_capped_and_exact():
    rng = np.random.default_rng(0)
    take = split_budget(np.array([100, 3, 50, 0, 7]), 40, rng)
    assert take.sum() == 40 and (take <= [100, 3, 50, 0, 7]).all()
    assert list(take[[1, 3, 4]]) == [3, 0, 7] and abs(int(take[0]) - int(take[2])) <= 1
    assert list(split_budget(np.array([2, 2]), 10, rng)) == [2, 2]


def test_resampling_takes_the_nearest_points_of_every_cluster():
    labels = np.array([0, 0, 0, 1, 1, 2])
    dist = np.array([0.3, 0.1, 0.2, 0.5, 0.4, 0.0])
    assert sorted(resampled(labels, dist, 3, 2).tolist()) == [1, 2, 3, 4, 5]
    assert sorted(resampled(labels, dist, 3, 1).tolist()) == [1, 4, 5]


def test_balanced_sampling_flattens_a_long_tail_and_is_deterministic():
    sizes = [800, 300, 100, 40, 20, 10, 5, 5]
    x, truth = blobs(sizes, seed=3)
    rows = ArrayRows(x)
    levels = hierarchical_kmeans(rows, [16, 4], seed=0, niter=10)
    again = hierarchical_kmeans(rows, [16, 4], seed=0, niter=10)
    assert all(np.array_equal(a.labels, b.labels) and np.array_equal(a.centroids, b.centroids)
               for a, b in zip(levels, again))
    allowed = np.ones(rows.n, dtype=bool)
    pick = balanced_sample(levels, allowed, 160, seed=1)
    assert len(pick) == 160 and len(np.unique(pick)) == 160
    assert np.array_equal(pick, balanced_sample(levels, allowed, 160, seed=1))
    assert not np.array_equal(pick, balanced_sample(levels, allowed, 160, seed=2))
    before = np.bincount(truth, minlength=8) / rows.n
    after = np.bincount(truth[pick], minlength=8) / len(pick)
    assert after[0] < 0.85 * before[0]  # the head shrinks
    assert (after[3:] > before[3:]).all()  # every tail blob gains share
    assert after[3:].sum() > 2 * before[3:].sum()


def test_levels_are_checked():
    assert auto_levels(10_000) == [200, 40, 8]
    assert auto_levels(30) == [2]
    rows = ArrayRows(blobs([20, 20])[0])
    with pytest.raises(ConfigError, match="decreasing"):
        hierarchical_kmeans(rows, [4, 8])
    with pytest.raises(ConfigError, match="only 40 images"):
        hierarchical_kmeans(rows, [50])


def test_npy_rows_read_and_take_match_the_array(tmp_path):
    from bigseer.curate.rows import NpyRows, TakeRows

    x = np.random.default_rng(0).normal(size=(70_000, 5)).astype(np.float16)
    np.save(tmp_path / "x.npy", x)
    rows = NpyRows(tmp_path / "x.npy")
    assert (rows.n, rows.dim) == x.shape
    assert np.array_equal(rows.read(65_530, 65_540), x[65_530:65_540])
    idx = np.array([69_999, 3, 65_536, 3, 65_535, 0])
    assert np.array_equal(rows.take(idx), x[idx])
    assert np.array_equal(TakeRows(rows, idx).read(1, 4), x[idx[1:4]])
