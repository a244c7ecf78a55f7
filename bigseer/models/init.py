"""Initial values as a function of (seed, tensor name, row): the same weights whole or as any shard.

A model's ``init_weights(seed, rows_of)`` fills each parameter through :func:`fill_rows_`: the logical tensor
is cut into blocks of whole rows (dim 0) of about ``BLOCK`` elements, and block ``b`` is drawn from a
generator seeded by ``(seed, name, b)``. A caller that holds only some rows (an FSDP2 shard, a rank's
prototype block) passes ``rows_of(tensor) -> (local rows, first global row)`` and draws just the blocks
those rows touch. So the eager model, a model materialised from the meta device, and every sharding of it
start from bitwise the same values, and ``bigseer.parallel`` keeps no init rules of its own.
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable

import torch

BLOCK = 1 << 16
RowsOf = Callable[[torch.Tensor], tuple[torch.Tensor, int]]
Draw = Callable[[torch.Tensor, torch.Generator], object]


def whole(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The default ``rows_of``: the tensor holds all its rows."""
    return t, 0


def _key(seed: int, name: str, block: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{name}/{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def fill_rows_(local: torch.Tensor, first_row: int, shape: tuple[int, ...], seed: int, name: str,
               draw: Draw) -> torch.Tensor:
    """Fill ``local`` (rows ``first_row ..`` of a logical tensor of ``shape``) with ``draw``'s values for
    those rows; returns ``local``."""
    if local.numel() == 0:
        return local
    row = math.prod(shape[1:]) if len(shape) > 1 else 1
    per_block = max(1, BLOCK // max(row, 1))
    rows = local.shape[0] if local.dim() else 1
    flat = local.reshape(rows, -1) if local.dim() else local.reshape(1, 1)
    gen = torch.Generator(device=local.device)
    b0, b1 = first_row // per_block, (first_row + rows - 1) // per_block
    for b in range(b0, b1 + 1):
        start = b * per_block
        n = min(per_block, (shape[0] if shape else 1) - start)
        block = torch.empty((n, row), dtype=local.dtype, device=local.device)
        gen.manual_seed(_key(seed, name, b))
        draw(block, gen)
        lo, hi = max(start, first_row), min(start + n, first_row + rows)
        flat[lo - first_row:hi - first_row].copy_(block[lo - start:hi - start])
    return local


def normal(std: float) -> Draw:
    return lambda t, g: t.normal_(0.0, std, generator=g)


def uniform(bound: float) -> Draw:
    return lambda t, g: t.uniform_(-bound, bound, generator=g)


def unit_rows(bound: float) -> Draw:
    """Uniform in [-bound, bound], then every row scaled to norm 1 (rows are whole, so shards agree)."""
    def draw(t: torch.Tensor, g: torch.Generator) -> None:
        t.uniform_(-bound, bound, generator=g)
        t.div_(t.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return draw


@torch.no_grad()
def init_param_(t: torch.Tensor, name: str, seed: int, draw: Draw, rows_of: RowsOf = whole) -> None:
    """Initialise parameter ``t`` (or its local rows) with ``draw`` keyed by ``name``."""
    local, first = rows_of(t)
    fill_rows_(local, first, tuple(t.shape), seed, name, draw)


@torch.no_grad()
def fill_(t: torch.Tensor, value: float, rows_of: RowsOf = whole) -> None:
    """Set ``t`` (or its local rows) to a constant."""
    rows_of(t)[0].fill_(value)


def default_seed() -> int:
    """A seed drawn from torch's default generator (so ``torch.manual_seed`` decides it)."""
    return int(torch.randint(0, 2 ** 62, (1,)).item())
