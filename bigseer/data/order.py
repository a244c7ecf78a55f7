"""The global sample order: a pure function of (seed, pass, global position), never of ranks or workers.

docs/DESIGN-scale.md section 1 gives the construction; in short, for pass ``e`` over ``N`` samples in ``S``
shards: permute the shards (seeded by ``e``), concatenate their members (each shard's members permuted by
a keyed bijection), cut that sequence into ``L`` contiguous runs and let position ``p`` read the next
sample of run ``p mod L`` (its *lane*). A lane therefore walks a few shards front to back; consecutive
positions come from ``L`` different shards. Lookup is O(log S) per position with O(S + L) memory per
pass; no per-image table exists.

Training step ``s`` consumes ``G`` consecutive positions and rank ``r`` of ``W`` takes the contiguous
slice ``r*G/W .. (r+1)*G/W`` of them (:func:`rank_positions`). With ``L = G`` (the default) a rank's
positions are the same ``G/W`` lanes at every step, so each shard of a pass is read by one rank only,
whatever ``W``; the samples of a step never depend on ``W``.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from bigseer.errors import DataError

_M64 = (1 << 64) - 1
REPLACE_IN_SHARD = 3  # tries 1..3 replace a bad sample by another member of its shard, later tries anywhere


def _mix(x: int) -> int:
    """splitmix64 finaliser: a good 64-bit integer hash."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def key_of(*parts: int) -> int:
    """A 64-bit hash of integers (order matters)."""
    h = 0x51ED
    for p in parts:
        h = _mix(h ^ (p & _M64))
    return h


class KeyedPermutation:
    """A pseudo-random bijection of ``range(n)`` determined by ``key`` (Feistel network + cycle walking)."""

    ROUNDS = 6

    def __init__(self, n: int, key: int) -> None:
        if n < 1:
            raise ValueError("permutation of an empty range")
        bits = max(2, (n - 1).bit_length())
        bits += bits % 2
        self.n, self.half = n, bits // 2
        self.mask = (1 << self.half) - 1
        self.keys = [key_of(key, r) for r in range(self.ROUNDS)]

    def __call__(self, i: int) -> int:
        x = i
        while True:  # the domain is < 4n, so a few steps on average
            left, right = x >> self.half, x & self.mask
            for k in self.keys:
                left, right = right, left ^ (_mix(right ^ k) & self.mask)
            x = (left << self.half) | right
            if x < self.n:
                return x


class _Pass:
    """Per-pass tables: shard order, prefix sums of the permuted counts, lane run starts."""

    def __init__(self, counts: np.ndarray, seed: int, e: int, lanes: int) -> None:
        n = int(counts.sum())
        rng = np.random.default_rng([seed & _M64, 0x5A55, e])
        self.shards = rng.permutation(len(counts))
        self.ends = np.cumsum(counts[self.shards])  # T_e index where each permuted shard ends
        first = (np.arange(lanes, dtype=np.int64) - e * n) % lanes  # offset of each lane's first position
        per_lane = np.where(first < n, (n - first + lanes - 1) // lanes, 0)
        self.first = first
        self.run_start = np.concatenate([[0], np.cumsum(per_lane)[:-1]])


class GlobalOrder:
    """Which catalog item (flat index) every global position reads; see the module docstring.

    ``counts[k]``: samples of shard ``k`` in catalog order (flat index of shard ``k``'s member ``m`` is
    ``sum(counts[:k]) + m``); ``lanes``: the run's lane count (its global batch when it started).
    """

    def __init__(self, counts: np.ndarray | list[int], seed: int, lanes: int) -> None:
        counts = np.asarray(counts, dtype=np.int64)
        if counts.ndim != 1 or counts.size == 0 or int(counts.sum()) < 1 or (counts < 0).any():
            raise DataError("the data source holds no samples")
        if isinstance(lanes, bool) or not isinstance(lanes, (int, np.integer)) or lanes < 1:
            raise DataError(f"lanes must be an integer >= 1, got {lanes!r}")
        self.counts, self.seed, self.lanes = counts, int(seed), int(lanes)
        self.n = int(counts.sum())
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self._passes: OrderedDict[int, _Pass] = OrderedDict()
        self._perms: OrderedDict[tuple[int, int], KeyedPermutation] = OrderedDict()

    def _pass(self, e: int) -> _Pass:
        tables = self._passes.get(e)
        if tables is None:
            tables = self._passes[e] = _Pass(self.counts, self.seed, e, self.lanes)
            while len(self._passes) > 2:
                self._passes.popitem(last=False)
        return tables

    def _member_perm(self, e: int, shard: int) -> KeyedPermutation:
        perm = self._perms.get((e, shard))
        if perm is None:
            perm = self._perms[(e, shard)] = KeyedPermutation(int(self.counts[shard]),
                                                              key_of(self.seed, 0x5EED, e, shard))
            while len(self._perms) > 4096:
                self._perms.popitem(last=False)
        return perm

    def locate(self, p: int) -> tuple[int, int]:
        """(shard, member) read at global position ``p``: O(log S)."""
        if p < 0:
            raise ValueError(f"position must be >= 0, got {p}")
        e, o = divmod(p, self.n)
        tables = self._pass(e)
        lane = p % self.lanes
        t = (o - int(tables.first[lane])) // self.lanes
        k = int(tables.run_start[lane]) + t
        j = int(np.searchsorted(tables.ends, k, side="right"))
        shard = int(tables.shards[j])
        within = k - (int(tables.ends[j - 1]) if j else 0)
        return shard, self._member_perm(e, shard)(within)

    def item(self, p: int) -> int:
        """Flat catalog index read at global position ``p``."""
        shard, member = self.locate(p)
        return int(self.starts[shard]) + member

    def epoch(self, p: int) -> int:
        """The pass that position ``p`` belongs to."""
        return p // self.n

    def replacement(self, p: int, attempt: int) -> int:
        """Stand-in for a bad item at position ``p`` on try ``attempt`` >= 1 (flat index): another member of
        the same shard for the first tries, then any sample of the catalog (an unreachable shard)."""
        h = key_of(self.seed, 0xBAD, p, attempt)
        if attempt <= REPLACE_IN_SHARD:
            shard, _ = self.locate(p)
            return int(self.starts[shard]) + h % int(self.counts[shard])
        return h % self.n


def rank_positions(start: int, global_batch: int, rank: int, world_size: int) -> range:
    """The global positions rank ``rank`` of ``world_size`` reads in the step starting at ``start``."""
    if global_batch % world_size:
        raise DataError(f"global batch {global_batch} is not divisible by {world_size} ranks")
    per_rank = global_batch // world_size
    return range(start + rank * per_rank, start + (rank + 1) * per_rank)
