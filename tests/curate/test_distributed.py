"""Two gloo ranks give what one process gives: embeddings row for row, torch k-means bit for bit, the same
curated selection. (One spawn of two ranks serves all three checks: spawning is the slow part.)"""

from __future__ import annotations

import pytest
import numpy as np

from bigseer.curate.embed import EmbedConfig, embed_source
from bigseer.curate.kmeans import torch_assign, torch_fit
from bigseer.curate.pipeline import CurateConfig, curate_embeddings
from bigseer.curate.rows import ArrayRows
from bigseer.curate.store import EmbeddingStore
from tests.curate.helpers import write_folder, write_weights
from tests.curate.test_kmeans import blobs
from tests.distributed_utils import run_distributed

pytestmark = pytest.mark.slow  # an end-to-end job: not in the fast tier (-m 'not slow')


def _work(rank: int, world: int, src: str, weights: str, out: str, x: np.ndarray) -> tuple:
    result = embed_source(EmbedConfig(src, weights, out, part_size=6, batch_size=4, resize=32, crop=32))
    centroids = torch_fit(ArrayRows(x), 5, niter=6, seed=3, block=64)
    labels, dist = torch_assign(ArrayRows(x), centroids, block=64)
    selected = curate_embeddings(CurateConfig(out, out + "-curated", levels=[6, 2], kmeans="torch", target=12,
                                              niter=5)).selected
    return result.parts_computed, centroids, labels, dist, selected


def test_two_ranks_equal_one_rank(tmp_path):
    src = str(tmp_path / "imgs")
    write_folder(src, 40)
    weights = write_weights(tmp_path / "tiny.safetensors")
    x, _ = blobs([300, 100, 40, 20, 10], seed=4)
    two = run_distributed(_work, 2, args=(src, weights, str(tmp_path / "two"), x))
    one = _work(0, 1, src, weights, str(tmp_path / "one"), x)
    assert sorted(two[0][0] + two[1][0]) == one[0] == list(range(7))  # parts dealt round-robin, none twice
    assert two[0][0] == [0, 2, 4, 6] and two[1][0] == [1, 3, 5]
    a, b = EmbeddingStore(tmp_path / "one"), EmbeddingStore(tmp_path / "two")
    assert np.array_equal(a.ids, b.ids) and list(a.sha1) == list(b.sha1)
    # same kernels on the same batches (batches restart at each part): equal in fp16, row for row
    assert np.array_equal(a.rows().read(0, a.n), b.rows().read(0, b.n))
    for rank_result in two:
        for got, want in zip(rank_result[1:], one[1:]):
            assert np.array_equal(got, want)
    assert (tmp_path / "two-curated" / "list.txt").read_text().count("\n") == 12
