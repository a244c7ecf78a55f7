"""Union-find over row numbers: duplicate pairs in, groups (connected components) out."""

from __future__ import annotations

import numpy as np


class UnionFind:
    """Disjoint sets of ``0 .. n-1`` (path halving, union by smaller root id, so results are order-free)."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, a: int) -> int:
        p = self.parent
        while p[a] != a:
            p[a] = p[p[a]]
            a = int(p[a])
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo

    def union_pairs(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            self.union(x, y)

    def labels(self) -> np.ndarray:
        """Component label of every element: the smallest element of its component."""
        for i in range(len(self.parent)):
            self.parent[i] = self.parent[self.parent[i]]  # parents precede children: one pass flattens fully
        return self.parent.copy()


def groups_of(labels: np.ndarray) -> list[np.ndarray]:
    """Members of every component with more than one element, in order of their smallest member."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    cuts = np.nonzero(np.diff(sorted_labels))[0] + 1
    return [g for g in np.split(order, cuts) if len(g) > 1]
