"""Sample order: exact coverage per pass across ranks and workers, purity, replacements."""

from __future__ import annotations

import pytest

from bigseer.data.order import KeyedPermutation, SampleOrder
from bigseer.errors import DataError


@pytest.mark.parametrize("n", [1, 2, 7, 64, 1000])
def test_keyed_permutation_is_a_bijection(n):
    perm = KeyedPermutation(n, key=123)
    assert sorted(perm(i) for i in range(n)) == list(range(n))
    if n >= 64:
        assert [perm(i) for i in range(n)] != list(range(n))
        assert [perm(i) for i in range(n)] != [KeyedPermutation(n, key=124)(i) for i in range(n)]


@pytest.mark.parametrize("n,world,workers", [(103, 2, 3), (64, 4, 2), (5, 1, 5), (17, 3, 1)])
def test_every_item_exactly_once_per_pass(n, world, workers):
    for p in range(3):
        seen = []
        for rank in range(world):
            order = SampleOrder(n, seed=7, rank=rank, world_size=world, workers=workers)
            for w in range(workers):
                s = order.slot(w)
                L = order.share(s)
                seen += [order.item(s, p * L + o) for o in range(L)]
                assert {order.epoch(s, p * L + o) for o in range(L)} == {p}
        assert sorted(seen) == list(range(n))


def test_passes_are_reshuffled_and_order_is_pure():
    a = SampleOrder(50, seed=1, rank=0, world_size=1, workers=1)
    b = SampleOrder(50, seed=1, rank=0, world_size=1, workers=1)
    assert [a.item(0, q) for q in range(50)] != [a.item(0, q) for q in range(50, 100)]
    assert [a.item(0, q) for q in range(120)][::-1] == [b.item(0, q) for q in reversed(range(120))]
    assert a.item(0, 3) != SampleOrder(50, seed=2, rank=0, world_size=1, workers=1).item(0, 3) or \
        a.item(0, 4) != SampleOrder(50, seed=2, rank=0, world_size=1, workers=1).item(0, 4)


def test_replacements_stay_in_the_slot_share():
    n, world, workers = 40, 2, 2
    orders = [SampleOrder(n, 0, r, world, workers) for r in range(world)]
    for r, order in enumerate(orders):
        for w in range(workers):
            s = order.slot(w)
            share = {order.item(s, q) for q in range(order.share(s))}
            reps = {order.replacement(s, q, t) for q in range(order.share(s)) for t in (1, 2, 3)}
            assert reps <= share and len(reps) > 1


def test_too_few_items_for_readers():
    with pytest.raises(DataError, match="fewer than world_size x workers"):
        SampleOrder(3, 0, 0, 2, 2)
