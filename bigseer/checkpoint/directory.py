"""Checkpoint directories: step dirs, the ``latest`` pointer, meta.json, pruning (the one owner of the layout).

    OUTPUT_DIR/checkpoints/step_00000100/   one committed checkpoint (written as .tmp-step_00000100, renamed)
    OUTPUT_DIR/checkpoints/latest           names the newest committed step dir; written last

Every reader of checkpoints (resume, export, ``bigseer.load_pretrained``) finds them through
:func:`find_latest` and reads their description through :func:`read_meta`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from bigseer.errors import CheckpointError

LATEST = "latest"
META = "meta.json"
FORMATS = ("elastic", "torch", "dcp", "deepspeed")  # elastic: every backend now; the others: bigseer 0.1


def step_dirname(step: int) -> str:
    return f"step_{step:08d}"


def checkpoints_root(output_dir: str | os.PathLike[str]) -> Path:
    return Path(output_dir) / "checkpoints"


def find_latest(path: str | os.PathLike[str]) -> Path | None:
    """The committed checkpoint for ``path`` (a step dir, a ``checkpoints`` dir or a run output dir), or None
    when there is none. A ``latest`` naming a missing step dir is a CheckpointError."""
    p = Path(path)
    if (p / META).is_file():
        return p
    for root in (p / "checkpoints", p):
        pointer = root / LATEST
        if pointer.is_file():
            name = pointer.read_text().strip()
            target = Path(name) if Path(name).is_absolute() else root / name
            if not (target / META).is_file():
                raise CheckpointError(f"{pointer} names {target.name}, which has no {META} (corrupt checkpoint dir)")
            return target
    return None


def read_meta(step_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """meta.json of a committed checkpoint, validated (format known, model params present)."""
    path = Path(step_dir) / META
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{step_dir} is not a bigseer checkpoint (no {META})") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") not in FORMATS:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path}: format {fmt!r} is not one of {', '.join(FORMATS)}")
    if "model" not in meta:
        raise CheckpointError(f"{path}: no 'model' (RegNet params)")
    return meta


def committed_steps(root: str | os.PathLike[str]) -> list[Path]:
    """Committed step dirs under a ``checkpoints`` dir, oldest first."""
    return sorted(p for p in Path(root).glob("step_*") if p.is_dir())


def prune(root: str | os.PathLike[str], keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` committed step dirs (never the one ``latest`` names)."""
    latest = (Path(root) / LATEST).read_text().strip() if (Path(root) / LATEST).is_file() else None
    for old in committed_steps(root)[:-keep_last]:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)


def point_latest_at(root: str | os.PathLike[str], max_step: int) -> Path | None:
    """Point ``latest`` at the newest committed step <= ``max_step`` (e.g. the last before a collapse);
    returns it, or None (``latest`` unchanged) when there is none."""
    from bigseer.atomic import write_text_atomic

    good = [p for p in committed_steps(root) if int(p.name.split("_")[1]) <= max_step]
    if not good:
        return None
    write_text_atomic(Path(root) / LATEST, good[-1].name + "\n")
    return good[-1]
