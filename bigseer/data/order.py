"""Sample order: which item every (rank, worker) reads at every position, as a pure function.

The stream is split into *slots*: ``slot = rank * workers + worker`` of ``world * workers``
slots. In pass ``p`` the catalog of ``n`` items is shuffled by a keyed bijection ``perm_p``
(a Feistel network with cycle walking, O(1) memory, no state), and slot ``s`` owns positions
``s, s + S, s + 2S, ...`` of it, so every pass covers every item exactly once across all slots.
A slot's infinite sequence is its share of pass 0, then of pass 1, and so on:
``item(s, q) = perm_{q // L}(s + (q % L) * S)`` with ``L`` the slot's share length.

Bad items: the *replacement* for position ``q`` on try ``t`` is a uniformly drawn position of
the same slot's share of the same pass (keyed by seed, slot, q, t), so a batch is a fixed
function of its position however many bad items precede it, and ranks never read each other's
items.
"""

from __future__ import annotations

from bigseer.errors import DataError

_M64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64 finaliser: a good 64-bit integer hash."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _key(*parts: int) -> int:
    h = 0x51ED
    for p in parts:
        h = _mix(h ^ (p & _M64))
    return h


class KeyedPermutation:
    """A pseudo-random bijection of ``range(n)`` determined by ``key``."""

    ROUNDS = 6

    def __init__(self, n: int, key: int) -> None:
        if n < 1:
            raise ValueError("permutation of an empty range")
        bits = max(2, (n - 1).bit_length())
        bits += bits % 2
        self.n, self.half = n, bits // 2
        self.mask = (1 << self.half) - 1
        self.keys = [_key(key, r) for r in range(self.ROUNDS)]

    def __call__(self, i: int) -> int:
        x = i
        while True:  # cycle walking: the domain is < 4n, so a few steps on average
            left, right = x >> self.half, x & self.mask
            for k in self.keys:
                left, right = right, left ^ (_mix(right ^ k) & self.mask)
            x = (left << self.half) | right
            if x < self.n:
                return x


class SampleOrder:
    """Item index for every (slot, position); see the module docstring for the rule."""

    def __init__(self, n: int, seed: int, rank: int, world_size: int, workers: int) -> None:
        slots = world_size * workers
        if n < slots:
            raise DataError(f"data source has {n} samples, fewer than world_size x workers = {slots} "
                            f"readers; use fewer workers or more data")
        self.n, self.seed, self.rank, self.world_size, self.workers = n, seed, rank, world_size, workers
        self.slots = slots
        self._perms: dict[int, KeyedPermutation] = {}

    def slot(self, worker: int) -> int:
        """Global slot of this rank's ``worker``."""
        return self.rank * self.workers + worker

    def share(self, slot: int) -> int:
        """Number of items a slot reads per pass."""
        return (self.n - slot + self.slots - 1) // self.slots

    def _perm(self, p: int) -> KeyedPermutation:
        perm = self._perms.get(p)
        if perm is None:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            perm = self._perms[p] = KeyedPermutation(self.n, _key(self.seed, 0x5A55, p))
        return perm

    def item(self, slot: int, q: int) -> int:
        """Item read by ``slot`` at position ``q`` of its infinite sequence."""
        length = self.share(slot)
        p, o = divmod(q, length)
        return self._perm(p)(slot + o * self.slots)

    def replacement(self, slot: int, q: int, attempt: int) -> int:
        """Stand-in for a bad item at position ``q`` (try ``attempt`` >= 1): same slot, same pass."""
        length = self.share(slot)
        p = q // length
        o = _key(self.seed, 0xBAD, self.slots, slot, q, attempt) % length
        return self._perm(p)(slot + o * self.slots)

    def epoch(self, slot: int, q: int) -> int:
        """Pass number of position ``q``."""
        return q // self.share(slot)
