"""Atomic training checkpoints: write to a temporary directory, rename, then point ``latest`` at it.

Layout (docs/INTERFACES.md)::

    OUTPUT_DIR/checkpoints/step_00000100/{meta.json, trainer.pt, rng_rank{r}.pt, state.pt | dcp/ | deepspeed/}
    OUTPUT_DIR/checkpoints/latest        # names the newest committed step dir; written last

A crash at any moment (kill -9 included) leaves the previous checkpoint loadable: an uncommitted
``.tmp-*`` directory is ignored and removed by the next save.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from bigseer import __version__
from bigseer.distributed import get_rank, get_world_size, is_distributed
from bigseer.errors import CheckpointError

LATEST = "latest"
TMP_PREFIX = ".tmp-"


class BackendState(Protocol):
    """What a parallel backend provides to persist its native state (model, optimizer, scaler)."""

    checkpoint_format: str

    def save(self, directory: str) -> None:
        """Collectively write the native state into ``directory`` (which exists)."""

    def load(self, directory: str) -> None:
        """Collectively restore the native state from ``directory``."""


def step_dirname(step: int) -> str:
    return f"step_{step:08d}"


def _barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(root))


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small file atomically (temp file + fsync + rename)."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU/CUDA, numpy, python)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {  # plain tensors/ints only, so it loads with weights_only=True
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: str | os.PathLike[str], step: int, backend: BackendState,
                    trainer_state: dict[str, Any], meta: dict[str, Any], keep_last: int = 2) -> Path:
    """Collectively save a checkpoint for ``step`` and commit it atomically. Returns its directory.

    All ranks call this. Rank 0 owns the directory operations; every rank writes its backend shard and
    its own RNG state.
    """
    root = Path(output_dir) / "checkpoints"
    rank = get_rank()
    final = root / step_dirname(step)
    tmp = root / f"{TMP_PREFIX}{step_dirname(step)}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        tmp.mkdir()
    _barrier()
    backend.save(str(tmp))
    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    if rank == 0:
        torch.save(trainer_state, tmp / "trainer.pt")
        full_meta = dict(meta, format=backend.checkpoint_format, step=step, world_size=get_world_size(),
                         bigseer_version=__version__)
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2))
    _barrier()
    if rank == 0:
        if final.exists():  # this step is already committed (e.g. resuming a finished run): keep it, never
            shutil.rmtree(tmp)  # delete a committed checkpoint, so no crash window leaves `latest` dangling
        else:
            _fsync_tree(tmp)
            os.replace(tmp, final)
            _fsync_dir(root)
        write_text_atomic(root / LATEST, final.name + "\n")
        _prune(root, keep_last)
    _barrier()
    return final


def _prune(root: Path, keep_last: int) -> None:
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def find_latest(path: str | os.PathLike[str]) -> Path | None:
    """The newest committed checkpoint under ``path`` (an output dir, its checkpoints/ dir, or a step dir)."""
    p = Path(path)
    if (p / "meta.json").is_file():
        return p
    for root in (p / "checkpoints", p):
        pointer = root / LATEST
        if pointer.is_file():
            target = root / pointer.read_text().strip()
            if not (target / "meta.json").is_file():
                raise CheckpointError(f"{pointer} names {target.name}, which has no meta.json (corrupt checkpoint dir)")
            return target
    return None


def read_meta(ckpt_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """meta.json of a committed checkpoint, with a clear error when it is missing or corrupt."""
    path = Path(ckpt_dir) / "meta.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt_dir} is not a bigseer checkpoint (no meta.json)") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}") from None


def load_checkpoint(ckpt_dir: str | os.PathLike[str], backend: BackendState,
                    check_meta: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Collectively restore backend state and this rank's RNG; return the trainer state (rank 0's)."""
    ckpt = Path(ckpt_dir)
    meta = read_meta(ckpt)
    if check_meta is not None:
        check_meta(meta)
    if meta.get("format") != backend.checkpoint_format:
        raise CheckpointError(f"{ckpt} was written in format {meta.get('format')!r} (backend "
                              f"{meta.get('backend')!r}); this run's backend writes {backend.checkpoint_format!r}")
    if meta.get("world_size") != get_world_size():
        raise CheckpointError(f"{ckpt} was written by {meta.get('world_size')} ranks; this run has "
                              f"{get_world_size()} (exact resume needs the same world size; use `bigseer export` "
                              "to take the weights elsewhere)")
    try:
        backend.load(str(ckpt))
    except CheckpointError:
        raise
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as exc:  # truncated / foreign backend state
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{ckpt}: cannot restore the {backend.checkpoint_format!r} state ({first}); "
                              "the checkpoint is corrupt or incomplete, resume from an older step dir") from None
    try:
        set_rng_state(torch.load(ckpt / f"rng_rank{get_rank()}.pt", weights_only=True))
        trainer = torch.load(ckpt / "trainer.pt", weights_only=True)
    except (FileNotFoundError, RuntimeError) as exc:
        raise CheckpointError(f"{ckpt}: cannot read trainer/RNG state: {exc}") from None
    return trainer
