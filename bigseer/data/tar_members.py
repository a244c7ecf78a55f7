"""Find the samples of one WebDataset-style tar shard: a fast walk over its 512-byte headers.

A sample is a key (the member path up to the first dot of its basename); its image is the first member
with an image extension (lacking one, its first member, which the decoder then skips as ``not_image``).
Samples are numbered in the order their key first appears. ustar, GNU long names and pax ``path``
records are understood. The walk stops at the end-of-archive block, at a header whose checksum is wrong
(corrupt from there on) or at the end of a truncated file; members cut short by truncation are kept
(reading them is then skipped as ``truncated``).
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from bigseer.data.files import IMAGE_EXTENSIONS

_BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")


def _octal(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _checksum_ok(header: bytes) -> bool:
    stored = header[148:156].split(b"\0", 1)[0].strip()
    try:
        want = int(stored, 8)
    except ValueError:
        return False
    return sum(header[:148]) + 8 * 32 + sum(header[156:]) == want


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header, if any."""
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            return None
        try:
            length = int(data[pos:space])
        except ValueError:
            return None
        record = data[space + 1:pos + length - 1]
        key, _, value = record.partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "surrogateescape")
        pos += max(length, 1)
    return None


class NotATar(OSError):
    """The file does not start with a tar header."""


def walk_members(read: Callable[[int, int], bytes], size: int) -> list[tuple[str, int, int]]:
    """(name, data offset, data size) of the regular files, in archive order. ``read(offset, n)`` reads bytes.
    NotATar when the very first header is neither valid nor the end-of-archive block."""
    out: list[tuple[str, int, int]] = []
    pos, long_name = 0, None
    if 0 < size < _BLOCK:
        raise NotATar(f"not a tar archive ({size} bytes)")
    while pos + _BLOCK <= size:
        header = read(pos, _BLOCK)
        if len(header) < _BLOCK or header == b"\0" * _BLOCK:
            break
        if not _checksum_ok(header):
            if pos == 0:
                raise NotATar("not a tar archive (no valid header at offset 0)")
            break
        n = _octal(header[124:136])
        kind = header[156:157]
        data_at = pos + _BLOCK
        if kind in (b"L", b"x"):
            payload = read(data_at, n)
            name = payload.split(b"\0", 1)[0].decode("utf-8", "surrogateescape") if kind == b"L" \
                else _pax_path(payload)
            long_name = name or long_name
        elif kind in _REGULAR:
            name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if header[257:262] == b"ustar" and header[345:346] != b"\0":
                prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                name = f"{prefix}/{name}"
            out.append((long_name or name, data_at, n))
            long_name = None
        else:
            long_name = None  # directories, links, global pax headers: no sample data
        pos = data_at + (n + _BLOCK - 1) // _BLOCK * _BLOCK
    return out


def sample_table(members: list[tuple[str, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, sizes) of each sample's image member, samples in first-appearance order of their key."""
    by_key: dict[str, list[tuple[str, int, int]]] = {}
    for name, offset, n in members:
        d, base = os.path.split(name)
        key, _, ext = base.partition(".")
        by_key.setdefault(os.path.join(d, key), []).append((ext.lower(), offset, n))
    offsets, sizes = [], []
    for entries in by_key.values():
        pick = next((m for m in entries if m[0].rsplit(".", 1)[-1] in IMAGE_EXTENSIONS), entries[0])
        offsets.append(pick[1])
        sizes.append(pick[2])
    return np.asarray(offsets, dtype=np.int64), np.asarray(sizes, dtype=np.int64)


def read_sample_table(path: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(offsets, sizes, file size) of the samples of the local tar file ``path``; OSError if unreadable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        members = walk_members(lambda off, n: os.pread(fd, n, off), size)
    finally:
        os.close(fd)
    offsets, sizes = sample_table(members)
    return offsets, sizes, size
