"""Pieces: where a rank's share of each logical (full-shape) tensor lives, whatever the backend.

A :class:`Piece` names a logical tensor (``model.<fqn>``, ``optim.<fqn>.<key>``, ``queue.<j>``), its full
shape, and the flat ranges of it that this rank holds in ``local`` (a 1-D view of the backend's own
storage: an FSDP2 shard's rows, a ZeRO partition, a DDP parameter, a sharded prototype block). Saving
stages every piece into CPU tensors carrying DCP's ``CheckpointableTensor`` fields (global shape, box
offsets and sizes), so ``torch.distributed.checkpoint`` writes logical tensors; loading builds the same
staging for the *resuming* layout, DCP reads the overlapping chunks whatever layout wrote them, and
the staged values are copied back into ``local``.

A flat range of a C-contiguous N-d tensor is a union of at most ``2N - 1`` boxes
(:func:`flat_range_boxes`); the staging tensor of a piece spans the rows (dim 0) its ranges touch, so
all boxes are sub-blocks of it (overhead: at most two rows per range).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

Box = tuple[tuple[int, ...], tuple[int, ...]]  # (offsets, sizes)


@dataclass
class Piece:
    """This rank's share of one logical tensor (see the module docstring).

    ``ranges``: (global flat start, local flat start, length). ``write``: this rank writes these elements
    (False for replicated copies another rank writes). ``full`` pieces hold the whole tensor."""

    name: str
    shape: tuple[int, ...]
    local: torch.Tensor
    ranges: list[tuple[int, int, int]] = field(default_factory=list)
    write: bool = True
    owner: torch.Tensor | None = None  # the tensor ``local`` is a contiguous copy of (see :meth:`whole`)

    @classmethod
    def whole(cls, name: str, tensor: torch.Tensor, write: bool = True) -> "Piece":
        """A piece holding all of ``tensor`` (e.g. a DDP parameter or a BN buffer). A tensor whose memory is
        not in the logical order (a channels_last conv weight) gets a contiguous copy as ``local``, written back
        by :meth:`commit`."""
        if tensor.is_contiguous():
            return cls(name, tuple(tensor.shape), tensor.view(-1), [(0, 0, tensor.numel())], write)
        local = tensor.detach().contiguous().view(-1)
        return cls(name, tuple(tensor.shape), local, [(0, 0, tensor.numel())], write, owner=tensor)

    def commit(self) -> None:
        """After writing into ``local``: copy it into the tensor it was copied from (a no-op for views)."""
        if self.owner is not None:
            with torch.no_grad():
                self.owner.copy_(self.local.view(self.owner.shape))

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_full(self) -> bool:
        return self.ranges == [(0, 0, self.numel)]


def flat_range_boxes(shape: tuple[int, ...], lo: int, hi: int) -> list[Box]:
    """Boxes (offsets, sizes) whose union is the flat range ``[lo, hi)`` of a C-contiguous ``shape``."""
    if lo >= hi:
        return []
    if len(shape) <= 1:
        return [((lo,), (hi - lo,))] if shape else [((), ())]
    inner = math.prod(shape[1:])
    r0, c0 = divmod(lo, inner)
    r1, c1 = divmod(hi, inner)
    rest = tuple(shape[1:])

    def row(r: int, a: int, b: int) -> list[Box]:
        return [((r, *o), (1, *s)) for o, s in flat_range_boxes(rest, a, b)]

    if r0 == r1:
        return row(r0, c0, c1)
    boxes: list[Box] = []
    if c0:
        boxes += row(r0, c0, inner)
        r0 += 1
    if r1 > r0:
        boxes.append(((r0,) + (0,) * len(rest), (r1 - r0,) + rest))
    if c1:
        boxes += row(r1, 0, c1)
    return boxes


def _row_span(piece: Piece) -> tuple[int, int]:
    """First row and number of rows of dim 0 that the piece's ranges touch."""
    if len(piece.shape) == 0:
        return 0, 1
    inner = math.prod(piece.shape[1:]) or 1
    first = min(g // inner for g, _, n in piece.ranges if n)
    last = max((g + n - 1) // inner for g, _, n in piece.ranges if n)
    return first, last - first + 1


def stage(piece: Piece, device: str = "cpu") -> torch.Tensor | None:
    """An empty staging tensor for ``piece`` with DCP's CheckpointableTensor fields, or a plain tensor when the
    piece is the whole tensor; None when the piece holds nothing."""
    ranges = [r for r in piece.ranges if r[2]]
    if not ranges:
        return None
    if piece.is_full or len(piece.shape) == 0:
        return torch.empty(piece.shape, dtype=piece.local.dtype, device=device)
    first, rows = _row_span(piece)
    buf = torch.empty((rows, *piece.shape[1:]), dtype=piece.local.dtype, device=device)
    offsets, locals_, sizes = [], [], []
    for g, _, n in ranges:
        for off, size in flat_range_boxes(piece.shape, g, g + n):
            offsets.append(tuple(off))
            locals_.append((off[0] - first, *off[1:]))
            sizes.append(tuple(size))
    buf.global_shape = tuple(piece.shape)  # type: ignore[attr-defined]
    buf.global_offsets = tuple(offsets)  # type: ignore[attr-defined]
    buf.local_offsets = tuple(locals_)  # type: ignore[attr-defined]
    buf.local_sizes = tuple(sizes)  # type: ignore[attr-defined]
    return buf


def _flat_view(piece: Piece, staged: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``staged`` flattened, and the global flat index of its first element."""
    if piece.is_full or len(piece.shape) == 0:
        return staged.reshape(-1), 0
    first, _ = _row_span(piece)
    return staged.reshape(-1), first * (math.prod(piece.shape[1:]) or 1)


def fill_staged(piece: Piece, staged: torch.Tensor) -> torch.Tensor:
    """Copy the piece's local values into its staging tensor (for saving); returns ``staged``."""
    flat, base = _flat_view(piece, staged)
    with torch.no_grad():
        for g, loc, n in piece.ranges:
            if n:
                flat[g - base:g - base + n].copy_(piece.local[loc:loc + n])
    return staged


def drain_staged(piece: Piece, staged: torch.Tensor) -> None:
    """Copy loaded values from the staging tensor back into the piece's local storage."""
    flat, base = _flat_view(piece, staged)
    with torch.no_grad():
        for g, loc, n in piece.ranges:
            if n:
                piece.local[loc:loc + n].copy_(flat[g - base:g - base + n].to(piece.local.dtype))
    piece.commit()


def flat_slice_piece(name: str, shape: tuple[int, ...], local: torch.Tensor, global_start: int,
                     local_start: int, length: int) -> Piece:
    """A piece holding one flat range (e.g. this rank's part of a ZeRO partition), clipped to the tensor."""
    length = max(0, min(length, math.prod(shape) - global_start))
    return Piece(name, tuple(shape), local, [(global_start, local_start, length)] if length > 0 else [])
