"""The SwAV queue as world-size-free checkpoint state.

Each rank's queue (``head.queue``: ``[assign crops, queue_length, D]``, newest first) holds, per *age* ``a``
(steps ago, ``0 .. A-1`` with ``A = queue_length / B``), the ``B`` embeddings of its own samples. Sinkhorn
uses the union of all ranks' queues, so what must survive a resume is that union: logical tensor
``queue.<j>`` of shape ``[A * G, D]`` where the rows of age ``a`` are ``a*G .. (a+1)*G - 1`` ordered by the
global sample slot (``rank * B + b``). A run resumed on M ranks with the same global batch G then holds
per rank ``A * G / M`` rows with the same ages: after every later step the union of the queues equals the
uninterrupted run's, so Sinkhorn sees the same embeddings.

With gradient accumulation (``micro`` = N micro-batches per step) a rank's queue holds ``N*B`` rows per age,
micro-batch ``m``'s at ``m*B``: they are the rows of virtual rank ``m*W + rank`` (as in the data order,
:mod:`bigseer.data.stream`), so ``W`` ranks x ``N`` and ``W*N`` ranks save the same logical queue.
"""

from __future__ import annotations

from typing import Any

from bigseer.checkpoint.pieces import Piece
from bigseer.errors import ConfigError


def queue_ages(queue_length: int, batch: int) -> int:
    """Ages held by a per-rank queue of ``queue_length`` rows at per-rank batch ``batch``."""
    if queue_length % batch:
        raise ConfigError(f"queue_length={queue_length} must be a multiple of the per-rank batch {batch} (the queue "
                          "holds whole steps, so it can be re-split when a run resumes on another number of ranks)")
    return queue_length // batch


def queue_pieces(head: Any, batch: int, rank: int, world: int, micro: int = 1) -> list[Piece]:
    """This rank's pieces of ``queue.<j>`` (empty without a queue); ``micro``: micro-batches per step."""
    if not getattr(head, "queue_length", 0):
        return []
    ages = queue_ages(head.queue_length, batch * micro)
    dim, glob = head.queue.shape[-1], batch * world * micro
    out = []
    for j in range(head.queue.shape[0]):
        local = head.queue[j].reshape(-1)
        ranges = [((a * glob + (m * world + rank) * batch) * dim, (a * micro + m) * batch * dim, batch * dim)
                  for a in range(ages) for m in range(micro)]
        out.append(Piece(f"queue.{j}", (ages * glob, dim), local, ranges))
    return out


def queue_state(head: Any, batch: int) -> dict[str, int]:
    """How many ages of the queue are filled (world-size free), for the trainer state."""
    if not getattr(head, "queue_length", 0):
        return {"ages_filled": 0}
    return {"ages_filled": int(head.queue_filled) // batch}


def load_queue_state(head: Any, state: dict[str, int] | None, batch: int) -> None:
    if getattr(head, "queue_length", 0) and state:
        head.queue_filled.fill_(min(head.queue_length, int(state.get("ages_filled", 0)) * batch))
