"""Pieces: flat ranges of logical tensors as boxes, staged and drained exactly."""

from __future__ import annotations

import itertools
import math

import torch

from bigseer.checkpoint.pieces import Piece, drain_staged, fill_staged, flat_range_boxes, stage


def _cover(shape, boxes) -> torch.Tensor:
    hits = torch.zeros(shape, dtype=torch.int64)
    for off, size in boxes:
        hits[tuple(slice(o, o + s) for o, s in zip(off, size))] += 1
    return hits.reshape(-1)


def test_boxes_cover_exactly_the_flat_range() -> None:
    for shape in ((7,), (3, 5), (2, 3, 4), (4, 1, 3, 3)):
        n = math.prod(shape)
        for lo, hi in itertools.combinations(range(n + 1), 2):
            boxes = flat_range_boxes(shape, lo, hi)
            hits = _cover(shape, boxes)
            assert hits[lo:hi].eq(1).all() and hits[:lo].eq(0).all() and hits[hi:].eq(0).all(), (shape, lo, hi)
            assert len(boxes) <= 2 * len(shape) - 1


def test_stage_fill_and_drain_round_trip_a_partition() -> None:
    full = torch.arange(60.0).reshape(5, 3, 4)
    local = full.reshape(-1)[17:41].clone()  # a ZeRO-style flat partition
    piece = Piece("w", (5, 3, 4), local, [(17, 0, 24)])
    staged = fill_staged(piece, stage(piece))
    assert staged.shape == (3, 3, 4)  # rows 1..3, the rows the range touches, not all 5
    for off, size in zip(staged.global_offsets, staged.local_sizes):
        box = tuple(slice(o, o + s) for o, s in zip(off, size))
        loc = tuple(slice(o, o + s) for o, s in zip(staged.local_offsets[staged.global_offsets.index(off)], size))
        assert torch.equal(staged[loc], full[box])
    target = Piece("w", (5, 3, 4), torch.zeros(24), [(17, 0, 24)])
    drain_staged(target, staged)
    assert torch.equal(target.local, local)
    assert stage(Piece("w", (5, 3, 4), torch.zeros(0), [])) is None


def test_a_channels_last_tensor_is_saved_in_logical_order_and_loaded_back_into_it() -> None:
    """A channels_last conv weight's memory is not its logical (NCHW) order: its piece holds a logical-order
    copy for saving, and loading writes the values back into the tensor itself (not only into the copy)."""
    weight = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    param = weight.clone().to(memory_format=torch.channels_last)
    piece = Piece.whole("w", param)
    assert torch.equal(piece.local, weight.reshape(-1))  # saved in logical order
    staged = fill_staged(piece, stage(piece))
    target = torch.zeros_like(weight).to(memory_format=torch.channels_last)
    drain_staged(Piece.whole("w", target), staged)
    assert target.is_contiguous(memory_format=torch.channels_last) and torch.equal(target, weight)
