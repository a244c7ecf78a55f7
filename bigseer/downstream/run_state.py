"""Atomic per-epoch checkpoint of a downstream run (``OUTPUT_DIR/checkpoint.pt``) and its resumption.

Written by the main process through :mod:`bigseer.atomic` (the writer pretraining checkpoints use: temp
file, fsync, rename), so a crash leaves either the previous or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from bigseer.downstream.config import RESUMABLE_CHANGES, EvalConfig
from bigseer.errors import CheckpointError, ConfigError

CHECKPOINT_NAME = "checkpoint.pt"
RESULTS_NAME = "results.json"


def checkpoint_path(output_dir: str) -> str:
    """Path of the run checkpoint inside ``output_dir``."""
    return os.path.join(output_dir, CHECKPOINT_NAME)


def _atomic_write(path: str, write: Any) -> None:
    """Through bigseer's one atomic writer (temp file, fsync, rename)."""
    from bigseer.atomic import write_with

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_with(path, lambda tmp: write(str(tmp)))


def save_checkpoint(output_dir: str, state: dict[str, Any]) -> str:
    """Atomically write ``state`` (model, optimizer, epoch, history, config, ...) to ``checkpoint.pt``."""
    path = checkpoint_path(output_dir)
    _atomic_write(path, lambda p: torch.save(state, p))
    return path


def save_results(output_dir: str, results: dict[str, Any]) -> str:
    """Atomically write the final results as ``results.json``."""
    path = os.path.join(output_dir, RESULTS_NAME)

    def write(p: str) -> None:
        with open(p, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")

    _atomic_write(path, write)
    return path


def load_checkpoint(output_dir: str, cfg: EvalConfig) -> dict[str, Any]:
    """Load ``checkpoint.pt`` for ``--resume``; ConfigError if it was written with other settings."""
    path = checkpoint_path(output_dir)
    if not os.path.isfile(path):
        raise CheckpointError(f"resume: no checkpoint at {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a foreign or truncated file
        raise CheckpointError(f"resume: cannot read {path!r}: {exc}") from exc
    if not isinstance(state, dict) or "config" not in state or "epoch" not in state:
        raise CheckpointError(f"resume: {path!r} is not a bigseer downstream checkpoint")
    saved, now = state["config"], cfg.to_dict()
    for key in sorted(now):
        if key not in RESUMABLE_CHANGES and saved.get(key) != now[key]:
            raise ConfigError(f"resume: {key}={now[key]!r} differs from the checkpoint's {saved.get(key)!r} "
                              f"({path})")
    return state


def resume_point(cfg: EvalConfig) -> dict[str, Any] | None:
    """The checkpoint ``cfg.resume`` continues (``latest``: required; ``auto``: when there is one), else None
    after checking that ``output_dir`` holds no earlier run's checkpoint."""
    have = bool(cfg.output_dir) and os.path.isfile(checkpoint_path(str(cfg.output_dir)))
    if cfg.resume == "latest" or (cfg.resume == "auto" and have):
        return load_checkpoint(str(cfg.output_dir), cfg)
    if cfg.resume == "no":
        check_fresh_output(cfg.output_dir)
    return None


def check_fresh_output(output_dir: str | None) -> None:
    """Refuse to overwrite an earlier run's checkpoint unless ``--resume`` is given."""
    if output_dir and os.path.isfile(checkpoint_path(output_dir)):
        raise ConfigError(f"output_dir {output_dir!r} already holds {CHECKPOINT_NAME}: pass --resume to continue "
                          "it or choose another output_dir")
