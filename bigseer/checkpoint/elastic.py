"""The "elastic" checkpoint format: logical full-shape tensors in a torch.distributed.checkpoint directory.

Writer and reader together (docs/DESIGN-scale.md section 5). ``save_pieces(dir, pieces)`` writes each
rank's :class:`~bigseer.checkpoint.pieces.Piece` as chunks of the logical tensors; ``load_pieces(dir,
pieces)`` fills the pieces of the *current* layout from whatever layout wrote them (N ranks -> M ranks,
fsdp <-> ddp <-> deepspeed). ``ElasticSource`` reads single tensors without a process group (export,
``bigseer.load_pretrained``); ``dcp_to_torch_save`` turns the directory into a plain state dict too.

Keys: ``model.<fqn>`` (parameters and buffers, the model's own names), ``optim.<fqn>.<state key>``
(e.g. LARS ``momentum_buffer``), ``queue.<j>`` (the SwAV queue, :mod:`bigseer.checkpoint.queue`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from bigseer.checkpoint.pieces import Piece, drain_staged, fill_staged, stage
from bigseer.errors import CheckpointError

STATE_DIR = "state"


def _quiet() -> warnings.catch_warnings:
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore", UserWarning)  # "assuming the intent is to load in a single process"
    warnings.simplefilter("ignore", FutureWarning)
    return ctx


def staged_state(pieces: list[Piece]) -> dict[str, torch.Tensor]:
    """CPU copies of this rank's pieces to write (the only synchronous part of an async save)."""
    out = {}
    for p in pieces:
        if not p.write:
            continue
        staged = stage(p)
        if staged is not None:
            out[p.name] = fill_staged(p, staged)
    return out


def write_staged(directory: str | Path, staged: dict[str, torch.Tensor], group: Any = None,
                 distributed: bool = False) -> None:
    """Write staged tensors as DCP into ``directory/state`` (collective over ``group`` when distributed)."""
    import torch.distributed.checkpoint as dcp

    ctx = _quiet()
    try:
        dcp.save(staged, storage_writer=dcp.FileSystemWriter(str(Path(directory) / STATE_DIR)),
                 process_group=group, no_dist=not distributed)
    finally:
        ctx.__exit__(None, None, None)


def stored_shapes(directory: str | Path) -> dict[str, tuple[int, ...]]:
    """Logical tensor name -> shape of everything in an elastic checkpoint (no data read)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    path = Path(directory) / STATE_DIR
    try:
        md = FileSystemReader(str(path)).read_metadata()
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint state ({_first_line(exc)})") from None
    return {k: tuple(v.size) for k, v in md.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}


def load_pieces(directory: str | Path, pieces: list[Piece], group: Any = None, distributed: bool = False,
                optional_prefixes: tuple[str, ...] = ("optim.",)) -> list[str]:
    """Fill ``pieces`` from an elastic checkpoint. Pieces whose tensor is absent raise CheckpointError, except
    names under ``optional_prefixes`` (optimizer state a checkpoint taken before any step lacks), which keep
    their values; those names are returned. A shape mismatch raises CheckpointError naming the tensor."""
    import torch.distributed.checkpoint as dcp

    shapes = stored_shapes(directory)
    missing, wanted = [], {}
    for p in pieces:
        if p.name not in shapes:
            if not p.name.startswith(optional_prefixes):
                raise CheckpointError(f"{directory}: the checkpoint has no tensor {p.name!r} (another model or head?)")
            missing.append(p.name)
            continue
        if tuple(shapes[p.name]) != tuple(p.shape):
            raise CheckpointError(f"{directory}: {p.name} is {list(shapes[p.name])} in the checkpoint but "
                                  f"{list(p.shape)} in this run (another model, head or prototype count?)")
        staged = stage(p)
        if staged is not None:
            wanted[p.name] = (p, staged)
    ctx = _quiet()
    try:
        dcp.load({k: v[1] for k, v in wanted.items()},
                 storage_reader=dcp.FileSystemReader(str(Path(directory) / STATE_DIR)),
                 process_group=group, no_dist=not distributed)
    except (Exception, dcp.CheckpointException) as exc:  # CheckpointException derives from BaseException
        raise CheckpointError(f"{directory}: cannot read the checkpoint state ({_first_line(exc)}); the "
                              "checkpoint is corrupt or incomplete, resume from an older step dir") from None
    finally:
        ctx.__exit__(None, None, None)
    for piece, staged in wanted.values():
        drain_staged(piece, staged)
    return missing


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__
