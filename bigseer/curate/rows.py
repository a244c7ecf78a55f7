"""Row sources for the curation maths: embeddings read block by block, never all at once.

Everything downstream of ``bigseer embed`` (dedup, k-means, assignment) reads embeddings through
:class:`Rows`: ``n`` rows of ``dim`` float16 values, ``read(start, stop)`` one contiguous block, ``take(idx)``
arbitrary rows. Backings: a numpy array (:class:`ArrayRows`), a ``.npy`` file read with ``pread``
(:class:`NpyRows`: no memory map, so the process holds one block, not the pages it has read), an embeddings
directory (:class:`bigseer.curate.store.StoreRows`, same reads) and a subset of another source (:class:`TakeRows`).
"""

from __future__ import annotations

import os
from typing import Iterator, Protocol

import numpy as np

DEFAULT_BLOCK = 65536


class Rows(Protocol):
    """``n`` embedding rows of width ``dim`` (float16 on disk)."""

    n: int
    dim: int

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start .. stop - 1`` as an array ``[stop - start, dim]``."""
        ...

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (sorted ascending is fastest) as an array ``[len(idx), dim]``."""
        ...


class ArrayRows:
    """Rows backed by a 2-D numpy array (possibly a memory map)."""

    def __init__(self, array: np.ndarray) -> None:
        if array.ndim != 2:
            raise ValueError(f"expected a 2-D array of rows, got shape {array.shape}")
        self.array = array
        self.n, self.dim = int(array.shape[0]), int(array.shape[1])

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.array[start:stop])

    def take(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.array[np.asarray(idx, dtype=np.int64)])


class FileRows:
    """``n`` x ``dim`` rows of ``dtype`` stored contiguously at ``offset`` of a file, read with ``pread``."""

    def __init__(self, path: str | os.PathLike[str], offset: int, n: int, dim: int, dtype: np.dtype) -> None:
        self.path, self.offset, self.n, self.dim = str(path), int(offset), int(n), int(dim)
        self.dtype = np.dtype(dtype)
        self.row_bytes = self.dim * self.dtype.itemsize
        self._fd: int | None = None
        self._pid = -1

    def _handle(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def read(self, start: int, stop: int) -> np.ndarray:
        count = max(0, min(stop, self.n) - start)
        data = os.pread(self._handle(), count * self.row_bytes, self.offset + start * self.row_bytes)
        if len(data) != count * self.row_bytes:
            raise OSError(f"{self.path}: short read ({len(data)} of {count * self.row_bytes} bytes)")
        return np.frombuffer(data, dtype=self.dtype).reshape(count, self.dim)

    def take(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), self.dim), dtype=self.dtype)
        if not len(idx):
            return out
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        blocks = sorted_idx // DEFAULT_BLOCK
        cuts = np.nonzero(np.diff(blocks))[0] + 1
        for sel in np.split(np.arange(len(idx)), cuts):  # one read per block that holds wanted rows
            lo, hi = int(sorted_idx[sel[0]]), int(sorted_idx[sel[-1]]) + 1
            out[order[sel]] = self.read(lo, hi)[sorted_idx[sel] - lo]
        return out


class NpyRows(FileRows):
    """The rows of a 2-D ``.npy`` file (e.g. float16 ``[n, dim]``), read block by block."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
        if len(shape) != 2 or fortran:
            raise ValueError(f"{path}: expected a C-ordered 2-D array, got shape {shape}")
        super().__init__(path, offset, shape[0], shape[1], dtype)


class TakeRows:
    """The rows ``idx`` of another source, renumbered ``0 .. len(idx) - 1``."""

    def __init__(self, base: Rows, idx: np.ndarray) -> None:
        self.base, self.idx = base, np.asarray(idx, dtype=np.int64)
        self.n, self.dim = int(len(self.idx)), base.dim

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.base.take(self.idx[start:stop])

    def take(self, idx: np.ndarray) -> np.ndarray:
        return self.base.take(self.idx[np.asarray(idx, dtype=np.int64)])


def iter_blocks(rows: Rows, block: int = DEFAULT_BLOCK,
                blocks: range | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, float32 block)`` over ``rows`` in blocks of ``block`` rows; ``blocks`` picks block numbers."""
    count = -(-rows.n // block)
    for b in (range(count) if blocks is None else blocks):
        start = b * block
        yield start, np.ascontiguousarray(rows.read(start, min(rows.n, start + block)), dtype=np.float32)
