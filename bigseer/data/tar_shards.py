"""A set of WebDataset-style tar shards, local or remote, as one catalog part with O(shards) state.

Start-up needs only per-shard sample counts: from a shard index (:mod:`bigseer.data.shard_index`) or, for
small sets without one, from walking every shard's headers once. A shard's member table (offset and size
of each sample's image) is read when a process first opens the shard (:mod:`bigseer.data.tar_members`)
and kept in a small per-process LRU; remote shards are fetched whole into the node cache first
(:mod:`bigseer.data.remote`). An opened shard is checked against the index (bytes, samples): a stale
index is one DataError naming the shard, never a silent misread.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from typing import Callable

import numpy as np

from bigseer.data.decode import SkipImage, decode_bytes, header_ok_bytes
from bigseer.data.shard_index import ShardEntry, is_url, stale_message
from bigseer.data.tar_members import read_sample_table
from bigseer.errors import DataError

log = logging.getLogger(__name__)

MAX_MEMBER_BYTES = 512 * 1024 * 1024
OPEN_TABLES = 64
OPEN_FILES = 16


class TarShards:
    """Catalog part over tar shards; item ``i`` is member ``i - start[k]`` of shard ``k``."""

    kind = "tar"

    def __init__(self, origin: str, urls: list[str], counts: list[int] | None = None,
                 sizes: list[int] | None = None, index: str = "", cache_dir: str | None = None) -> None:
        self.origin, self.urls, self.index = origin, list(urls), index
        self.cache_dir = cache_dir  # node-local cache of remote shards (None: the default one)
        self.bad_shards: list[str] = []
        self._tables: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._dead: dict[int, tuple[str, str]] = {}  # shards this process could not fetch: never retried
        if counts is None:
            counts, sizes = self._walk_all()
        self.counts = np.asarray(counts, dtype=np.int64)
        self.sizes = np.asarray(sizes if sizes is not None else [-1] * len(self.urls), dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._pid = os.getpid()

    @classmethod
    def from_index(cls, origin: str, entries: list[ShardEntry], index: str,
                   cache_dir: str | None = None) -> "TarShards":
        return cls(origin, [e.url for e in entries], [e.nsamples for e in entries], [e.filesize for e in entries],
                   index=index, cache_dir=cache_dir)

    def _walk_all(self) -> tuple[list[int], list[int]]:
        t0 = time.perf_counter()
        counts, sizes = [], []
        for k, url in enumerate(self.urls):
            try:
                offsets, lengths, size = self._read_table(url)
            except (OSError, _Unavailable) as exc:
                if len(self.urls) == 1:
                    raise DataError(f"cannot read tar shard {url}: {exc}") from None
                log.warning("skipping unreadable shard %s: %s", url, exc)
                self.bad_shards.append(url)
                counts.append(0)
                sizes.append(-1)
                continue
            self._tables[k] = (offsets, lengths)
            while len(self._tables) > OPEN_TABLES:  # bounded while walking too: O(shards) memory, not O(images)
                self._tables.popitem(last=False)
            counts.append(len(offsets))
            sizes.append(size)
        if len(self.bad_shards) == len(self.urls):
            raise DataError(f"none of the {len(self.urls)} tar shards of {self.origin} can be read")
        dt = time.perf_counter() - t0
        if len(self.urls) > 1:
            log.info("no shard index for %s: walked %d shard headers in %.1f s (`bigseer index` writes one, "
                     "then start-up reads only the index)", self.origin, len(self.urls), dt)
        return counts, sizes

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"], state["_pid"] = OrderedDict(), -1
        return state

    def __len__(self) -> int:
        return int(self.counts.sum())

    def shard_counts(self) -> np.ndarray:
        return self.counts

    def describe(self) -> str:
        bad = f", {len(self.bad_shards)} unreadable shards skipped" if self.bad_shards else ""
        index = f", index {self.index}" if self.index else ""
        return f"tar {self.origin} ({len(self.urls)} shards, {len(self)} samples{bad}{index})"

    # ---- one shard ------------------------------------------------------------------------------
    def _local(self, url: str, k: int | None = None) -> str:
        if not is_url(url):
            return url
        from bigseer.data.remote import ShardUnavailable, SizeMismatch, default_cache

        try:
            return default_cache(self.cache_dir).local_path(url, int(self.sizes[k]) if k is not None else -1)
        except ShardUnavailable as exc:
            raise _Unavailable(exc.reason, exc.detail) from None
        except SizeMismatch as exc:
            raise DataError(stale_message(self.index or "(index)", url, "bytes", exc.got, exc.want)) from None

    def _read_table(self, url: str, k: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        return read_sample_table(self._local(url, k))

    def _table(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        table = self._tables.get(k)
        if table is not None:
            self._tables.move_to_end(k)
            return table
        url = self.urls[k]
        if k in self._dead:
            raise SkipImage(*self._dead[k])
        try:
            offsets, lengths, size = self._read_table(url, k)
        except _Unavailable as exc:
            self._dead[k] = (exc.reason, exc.detail)
            raise SkipImage(exc.reason, exc.detail) from None
        except OSError as exc:
            self._dead[k] = ("unreadable", f"{url}: {exc.strerror or exc}")
            raise SkipImage(*self._dead[k]) from None
        partial = self._local(url, k).endswith(".partial")
        if self.index and not partial:
            if self.sizes[k] >= 0 and size != self.sizes[k]:
                raise DataError(stale_message(self.index, url, "bytes", size, int(self.sizes[k])))
            if len(offsets) != self.counts[k]:
                raise DataError(stale_message(self.index, url, "samples", len(offsets), int(self.counts[k])))
        self._tables[k] = (offsets, lengths)
        while len(self._tables) > OPEN_TABLES:
            self._tables.popitem(last=False)
        return offsets, lengths

    def _fd(self, k: int) -> int:
        if self._pid != os.getpid():  # never share descriptors with a forked parent/child
            self._fds, self._pid = OrderedDict(), os.getpid()
        fd = self._fds.get(k)
        if fd is None:
            path = self._local(self.urls[k], k)
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise SkipImage("unreadable", f"{path}: {exc.strerror or exc}") from None
            self._fds[k] = fd
            while len(self._fds) > OPEN_FILES:
                os.close(self._fds.popitem(last=False)[1])
        return fd

    def verify(self, sample: int = 16) -> None:
        """Check the index against a few local shards' sizes now (the rest are checked when opened)."""
        if not self.index:
            return
        local = [k for k, u in enumerate(self.urls) if not is_url(u)]
        spots = np.linspace(0, len(local) - 1, min(sample, len(local)))  # empty when no shard is local
        picks = sorted({local[int(i)] for i in spots})
        for k in picks:
            try:
                size = os.stat(self.urls[k]).st_size
            except OSError as exc:
                raise DataError(f"shard index {self.index} names {self.urls[k]}, which cannot be read: "
                                f"{exc.strerror or exc}") from None
            if self.sizes[k] >= 0 and size != self.sizes[k]:
                raise DataError(stale_message(self.index, self.urls[k], "bytes", size, int(self.sizes[k])))

    def read(self, i: int) -> bytes:
        """The image member bytes of item ``i``; raises SkipImage."""
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        m = i - int(self.starts[k])
        offsets, lengths = self._table(k)
        if m >= len(offsets):
            raise SkipImage("truncated", f"{self.urls[k]}: sample {m} is past the end of the shard")
        size = int(lengths[m])
        if size > MAX_MEMBER_BYTES:
            raise SkipImage("too_large", f"tar member of {size} bytes")
        try:
            data = os.pread(self._fd(k), size, int(offsets[m]))
        except OSError as exc:
            raise SkipImage("unreadable", str(exc)) from None
        if len(data) < size:
            raise SkipImage("truncated", f"tar member cut short ({len(data)} of {size} bytes)")
        return data

    def load(self, i: int, plan: Callable, **kw):
        return decode_bytes(self.read(i), plan, **kw)

    def header_ok(self, i: int) -> bool:
        try:
            data = self.read(i)
        except SkipImage:
            return False
        return bool(data) and header_ok_bytes(data)

    def probe_items(self, probe: int) -> list[int]:
        """Items to probe for images at start-up: the first shard with samples only (one fetch if remote)."""
        k = int(np.argmax(self.counts > 0))
        n = int(self.counts[k])
        start = int(self.starts[k])
        return sorted({start + int(v) for v in np.linspace(0, n - 1, min(n, probe))})


class _Unavailable(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail
