"""The embeddings directory ``bigseer embed`` writes and ``bigseer dedup`` / ``bigseer curate`` read.

    EMB/manifest.json                       what was embedded and how (source, weights, part size, dim, ...)
    EMB/parts/part-000007/                  one committed part (written as parts/.tmp-part-000007.<pid>, renamed)
        embeddings.safetensors              "embeddings" [n, dim] float16 (pooled, L2-normalised), "ids" [n] int64,
                                            "thumbs" [n, 256] float16 (16x16 grey copy descriptor, items.thumbnail)
        samples.json                        ids, paths, sha1 (of the encoded bytes), sizes [w, h], skipped by
                                            reason, skipped_items [[id, reason, path]], seconds, rank
    EMB/report.json, EMB/report.md          totals of the last embed run

Part ``k`` covers catalog items ``k * part_size .. (k + 1) * part_size - 1`` whatever the number of ranks; ids
are catalog indices of ``bigseer.data.open_source(manifest["source"])``. A part directory appears complete or
not at all (:func:`bigseer.atomic.commit_dir`), so a killed run resumes by skipping committed parts.
Embeddings are read from the safetensors data with ``pread`` (:class:`StoreRows`), block by block.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from bigseer.curate.rows import FileRows
from bigseer.data.sources import PathTable
from bigseer.errors import ConfigError, DataError

FORMAT = "bigseer-embeddings"
VERSION = 1
MANIFEST = "manifest.json"
PARTS = "parts"
EMBEDDINGS_FILE = "embeddings.safetensors"
SAMPLES_FILE = "samples.json"
_PART_RE = re.compile(r"^part-(\d{6,})$")
# manifest fields that must match for a run to continue an existing directory
IDENTITY = ("source", "samples", "part_size", "weights", "model", "layer", "resize", "crop")


def part_name(k: int) -> str:
    return f"part-{k:06d}"


def num_parts(samples: int, part_size: int) -> int:
    return -(-samples // part_size)


def read_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of embeddings directory ``root``; DataError when there is none."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"embeddings directory {root} does not exist (write it with `bigseer embed SRC --weights W "
                        f"--out {root}`)")
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise DataError(f"{root} is not an embeddings directory: no {MANIFEST} "
                        f"(write one with `bigseer embed`)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {root / MANIFEST}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{root / MANIFEST} is not a bigseer embeddings manifest (format {FORMAT!r})")
    return manifest


def check_same_run(root: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """ConfigError when an existing directory was written with other settings than this run's."""
    for key in IDENTITY:
        if old.get(key) != new.get(key):
            raise ConfigError(f"{root} holds embeddings of another run ({key}: {old.get(key)!r}, "
                              f"now {new.get(key)!r}); use another --out or delete it")


def committed_parts(root: str | os.PathLike[str]) -> set[int]:
    """Numbers of the committed parts under ``root/parts`` (temp directories ignored)."""
    parts = Path(root) / PARTS
    if not parts.is_dir():
        return set()
    return {int(m.group(1)) for e in os.scandir(parts) if (m := _PART_RE.match(e.name)) and e.is_dir()}


def safetensors_tensor(path: Path, name: str) -> tuple[int, tuple[int, ...], np.dtype]:
    """(byte offset, shape, dtype) of tensor ``name`` in a safetensors file (header only)."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    info = header.get(name)
    if info is None:
        raise DataError(f"{path} holds no tensor {name!r}")
    dtype = np.dtype({"F16": np.float16, "F32": np.float32, "I64": np.int64, "I32": np.int32}[info["dtype"]])
    return 8 + size + int(info["data_offsets"][0]), tuple(info["shape"]), dtype


def read_ids(path: Path) -> np.ndarray:
    """The ``ids`` tensor of a part's embeddings file."""
    offset, shape, dtype = safetensors_tensor(path, "ids")
    return np.fromfile(path, dtype=dtype, count=int(np.prod(shape)), offset=offset)


class EmbeddingStore:
    """A complete embeddings directory: per-row ids, paths, hashes, sizes and the rows themselves.

    Raises DataError for a missing directory or manifest, missing parts (an unfinished embed) and parts
    whose ids disagree between ``embeddings.safetensors`` and ``samples.json``.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.num_parts = num_parts(int(self.manifest["samples"]), int(self.manifest["part_size"]))
        done = committed_parts(self.root)
        missing = [k for k in range(self.num_parts) if k not in done]
        if missing:
            raise DataError(f"embeddings {self.root} are incomplete: {len(missing)} of {self.num_parts} parts missing "
                            f"(first {part_name(missing[0])}); run the same `bigseer embed` command again to finish")
        self.dim = int(self.manifest["dim"])
        ids, paths, sha1, sizes, self.part_rows = [], [], [], [], [0]
        self.skipped: dict[str, int] = {}
        self.skipped_items: list[list] = []
        for k in range(self.num_parts):
            meta = self._part_samples(k)
            n = len(meta["ids"])
            emb_ids = read_ids(self._part_file(k))
            if len(emb_ids) != n or not np.array_equal(np.asarray(emb_ids), np.asarray(meta["ids"], dtype=np.int64)):
                raise DataError(f"{self.root / PARTS / part_name(k)}: the ids of {EMBEDDINGS_FILE} ({len(emb_ids)}) "
                                f"and {SAMPLES_FILE} ({n}) disagree; delete the part and run `bigseer embed` again")
            if not (len(meta["paths"]) == len(meta["sha1"]) == len(meta["sizes"]) == n):
                raise DataError(f"{self.root / PARTS / part_name(k)}/{SAMPLES_FILE}: ids, paths, sha1 and sizes "
                                f"differ in length")
            ids.append(np.asarray(meta["ids"], dtype=np.int64))
            paths.extend(meta["paths"])
            sha1.extend(meta["sha1"])
            sizes.extend(meta["sizes"])
            self.part_rows.append(self.part_rows[-1] + n)
            for reason, count in meta["skipped"].items():
                self.skipped[reason] = self.skipped.get(reason, 0) + int(count)
            self.skipped_items.extend(meta.get("skipped_items", []))
        self.ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        self.paths = PathTable(paths)
        self.sha1 = np.asarray(sha1, dtype="S40") if sha1 else np.zeros(0, dtype="S40")
        self.sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        self.n = len(self.ids)
        if self.n == 0:
            raise DataError(f"embeddings {self.root}: no image of {self.manifest['source']!r} could be embedded "
                            f"(skipped: {self.skipped})")

    def _part_file(self, k: int) -> Path:
        return self.root / PARTS / part_name(k) / EMBEDDINGS_FILE

    def _part_samples(self, k: int) -> dict[str, Any]:
        path = self.root / PARTS / part_name(k) / SAMPLES_FILE
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path}: {exc}") from None

    def rows(self, tensor: str = "embeddings") -> "StoreRows":
        """The embeddings (or ``"thumbs"``) as :class:`~bigseer.curate.rows.Rows` (float16, read block by block)."""
        return StoreRows(self, tensor)

    def row_of_id(self, ids: np.ndarray) -> np.ndarray:
        """Row numbers of catalog ids (ids are sorted ascending in the store)."""
        rows = np.searchsorted(self.ids, ids)
        bad = (rows >= self.n) | (self.ids[np.minimum(rows, self.n - 1)] != ids)
        if bad.any():
            raise DataError(f"id {int(np.asarray(ids)[bad][0])} is not in embeddings {self.root}")
        return rows


class StoreRows:
    """Rows of an :class:`EmbeddingStore`, read from the parts' files with ``pread`` (a few open files)."""

    def __init__(self, store: EmbeddingStore, tensor: str = "embeddings") -> None:
        self.store, self.tensor = store, tensor
        self.n = store.n
        self.dim = store.dim if tensor == "embeddings" else safetensors_tensor(store._part_file(0), tensor)[1][1]
        self._starts = np.asarray(store.part_rows, dtype=np.int64)
        self._files: dict[int, FileRows] = {}

    def _part(self, k: int) -> FileRows:
        f = self._files.get(k)
        if f is None:
            if len(self._files) >= 64:
                self._files.pop(next(iter(self._files))).close()
            path = self.store._part_file(k)
            offset, shape, dtype = safetensors_tensor(path, self.tensor)
            rows = int(self._starts[k + 1] - self._starts[k])
            if shape != (rows, self.dim) or dtype != np.float16:
                raise DataError(f"{path}: {self.tensor} are {dtype} {list(shape)}, "
                                f"expected float16 [{rows}, {self.dim}]")
            f = self._files[k] = FileRows(path, offset, rows, self.dim, dtype)
        return f

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((max(0, stop - start), self.dim), dtype=np.float16)
        pos = start
        while pos < stop:
            k = int(np.searchsorted(self._starts, pos, side="right")) - 1
            end = min(stop, int(self._starts[k + 1]))
            base = int(self._starts[k])
            out[pos - start:end - start] = self._part(k).read(pos - base, end - base)
            pos = end
        return out

    def take(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), self.dim), dtype=np.float16)
        parts = np.searchsorted(self._starts, idx, side="right") - 1
        for k in np.unique(parts):
            sel = np.nonzero(parts == k)[0]
            out[sel] = self._part(int(k)).take(idx[sel] - int(self._starts[k]))
        return out
