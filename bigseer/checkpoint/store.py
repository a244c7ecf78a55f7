"""Saving and resuming training checkpoints (atomic, optionally in the background) in the elastic format.

    step_00000100/
        meta.json        {"format": "elastic", "step", "world_size", "backend", "model", "head", "config", ...}
        state/           DCP of logical tensors (bigseer.checkpoint.elastic)
        trainer.pt       step, data position, LR schedule, loss scaler, queue ages (world-size free)
        rng/rank00000.pt per-rank RNG state
        deepspeed/       only with DeepSpeed's native format requested (its own layout and ``latest``)

:class:`CheckpointWriter` stages a rank's pieces into CPU copies (the only part that stalls training),
then writes them (DCP on a gloo group of its own, so it never interleaves with training collectives),
and rank 0 commits: fsync, rename ``.tmp-step_*`` -> ``step_*``, then ``latest``. With ``async_save`` the
writing and committing run in a background thread; the next save and :meth:`CheckpointWriter.wait` wait
for it. A crash at any moment leaves the previous checkpoint as ``latest``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch

from bigseer.atomic import TMP_PREFIX, commit_dir, remove_stale, write_text_atomic
from bigseer.checkpoint.directory import LATEST, META, checkpoints_root, prune, read_meta, step_dirname
from bigseer.checkpoint.elastic import load_pieces, staged_state, write_staged
from bigseer.checkpoint.pieces import Piece
from bigseer.checkpoint.rng import rng_state, set_rng_state
from bigseer.distributed import get_rank, get_world_size, is_distributed
from bigseer.errors import CheckpointError
from bigseer.version import __version__

log = logging.getLogger(__name__)

FORMAT = "elastic"


def checkpoint_group() -> Any:
    """A gloo process group for checkpoint I/O coordination (None with one process). Collective."""
    if not is_distributed():
        return None
    import torch.distributed as dist

    return dist.new_group(backend="gloo")


class CheckpointWriter:
    """Writes step checkpoints under ``OUTPUT_DIR/checkpoints`` (see the module docstring). Every rank
    creates one (collectively) and calls :meth:`save` with its own pieces."""

    def __init__(self, output_dir: str | os.PathLike[str], keep_last: int = 2, async_save: bool = False,
                 group: Any = None) -> None:
        self.root = checkpoints_root(output_dir)
        self.keep_last, self.async_save = keep_last, async_save
        self._own_group = group is None
        self.group = group if group is not None else checkpoint_group()
        self.distributed = is_distributed()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bigseer-ckpt") if async_save else None
        self._pending: Future | None = None
        self.last_stall_s = 0.0

    def _barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier(group=self.group)

    def save(self, step: int, pieces: list[Piece], trainer_state: dict[str, Any], meta: dict[str, Any],
             native: Callable[[str], None] | None = None) -> Path:
        """Checkpoint ``step``; returns its (future) directory. Collective. ``native(tmp_dir)`` writes extra
        backend-native files synchronously before the commit."""
        t0 = time.perf_counter()
        self.wait()
        rank = get_rank()
        final = self.root / step_dirname(step)
        tmp = self.root / f"{TMP_PREFIX}{step_dirname(step)}"
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            remove_stale(self.root)
            tmp.mkdir()
        self._barrier()
        staged = staged_state(pieces)
        rng = rng_state()
        if native is not None:
            native(str(tmp))
        full_meta = dict(meta, format=FORMAT, step=step, world_size=get_world_size(), bigseer_version=__version__)
        if self._pool is not None:
            self._pending = self._pool.submit(self._write, tmp, final, staged, rng, trainer_state, full_meta)
        else:
            self._write(tmp, final, staged, rng, trainer_state, full_meta)
        self.last_stall_s += time.perf_counter() - t0  # summed until the engine logs and resets it
        return final

    def _write(self, tmp: Path, final: Path, staged: dict[str, torch.Tensor], rng: dict[str, Any],
               trainer_state: dict[str, Any], meta: dict[str, Any]) -> Path:
        rank = get_rank()
        write_staged(tmp, staged, group=self.group, distributed=self.distributed)
        (tmp / "rng").mkdir(exist_ok=True)
        torch.save(rng, tmp / "rng" / f"rank{rank:05d}.pt")
        if rank == 0:
            torch.save(trainer_state, tmp / "trainer.pt")
            (tmp / META).write_text(json.dumps(meta, indent=2))
        self._barrier()
        if rank == 0:
            if final.exists():  # already committed (e.g. resuming a finished run): never replace a committed dir
                shutil.rmtree(tmp)
            else:
                commit_dir(tmp, final)
            write_text_atomic(self.root / LATEST, final.name + "\n")
            prune(self.root, self.keep_last)
        self._barrier()
        return final

    def wait(self) -> None:
        """Block until the background save (if any) is committed; re-raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the pending save, stop the writer thread and destroy the gloo group it made. Idempotent."""
        self.wait()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._own_group and self.group is not None:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group(self.group)
            self.group = None


def save_checkpoint(output_dir: str | os.PathLike[str], step: int, pieces: list[Piece],
                    trainer_state: dict[str, Any], meta: dict[str, Any], keep_last: int = 2) -> Path:
    """Synchronous one-off save (collective)."""
    writer = CheckpointWriter(output_dir, keep_last)
    try:
        return writer.save(step, pieces, trainer_state, meta)
    finally:
        writer.close()


def read_trainer_state(step_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``trainer.pt`` of a committed checkpoint (the trainer's named parts): the one reader of that file."""
    try:
        return torch.load(Path(step_dir) / "trainer.pt", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{step_dir}: cannot read trainer state: {str(exc).splitlines()[0]}") from None


def load_checkpoint(step_dir: str | os.PathLike[str], pieces: list[Piece],
                    check_meta: Callable[[dict[str, Any]], None] | None = None,
                    group: Any = None, known: tuple[dict[str, Any], dict[str, Any]] | None = None
                    ) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Fill ``pieces`` (this run's layout, any world size) from a checkpoint; restore this rank's RNG when the
    checkpoint has one for it. Returns (trainer state, meta, names of optional tensors it lacked). ``known``:
    the (meta, trainer state) the caller already read, so neither file is read twice."""
    step = Path(step_dir)
    meta, trainer = known if known is not None else (read_meta(step), None)
    if check_meta is not None:
        check_meta(meta)
    if meta["format"] != FORMAT:
        raise CheckpointError(f"{step} is a bigseer 0.1 checkpoint (format {meta['format']!r}), which this version "
                              "cannot resume; `bigseer export` still reads its weights")
    missing = load_pieces(step, pieces, group=group, distributed=is_distributed())
    rng = step / "rng" / f"rank{get_rank():05d}.pt"
    try:
        if rng.is_file():
            set_rng_state(torch.load(rng, weights_only=True))
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{step}: cannot read RNG state: {str(exc).splitlines()[0]}") from None
    return (trainer if trainer is not None else read_trainer_state(step)), meta, missing
