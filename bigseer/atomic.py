"""The one atomic writer: files and directories appear complete or not at all (temp name, fsync, rename).

Used by checkpoints (pretraining and downstream), shard indexes and exports' small files. A crash at any
moment leaves either the previous file or the new one; temp names start with ``.tmp-`` and are ignored
(and cleaned up) by readers of the directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

TMP_PREFIX = ".tmp-"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory entry (makes a rename in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike[str]) -> None:
    """fsync every file and directory below ``path``."""
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(root)


def tmp_name(path: Path) -> Path:
    """The temp sibling ``path`` is written under (unique per process)."""
    return path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")


def write_with(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` to produce the file, then fsync and rename it onto ``path`` atomically."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode())


def commit_dir(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> Path:
    """fsync everything in the finished directory ``tmp`` and rename it to ``final`` (which must not exist)."""
    tmp, final = Path(tmp), Path(final)
    fsync_tree(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return final


def remove_stale(root: str | os.PathLike[str]) -> None:
    """Delete ``.tmp-*`` leftovers of interrupted writes in ``root`` (files or directories)."""
    for stale in Path(root).glob(f"{TMP_PREFIX}*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
