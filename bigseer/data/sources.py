"""Data sources behind one ``--data`` string: folders, path lists, tar shards, ``builtin``.

``open_source("DATA")`` auto-detects each comma-separated part (commas inside ``{...}`` belong to
brace patterns):

* ``builtin`` or ``builtin:N`` - N procedurally drawn images (default 512), no files;
* a directory - every non-hidden file below it, recursively, whatever its extension;
* a ``.tar`` file, glob or brace pattern (``shards-{0000..0099}.tar``) - WebDataset-style shards
  (:mod:`bigseer.data.tar_shards`): one sample per key (path up to the first dot of the basename), its
  image member (or, lacking one, its first member, which is then skipped as ``not_image``); when the
  pattern's directory holds an ``index.json`` listing exactly those shards, start-up reads only it;
* a shard index ``*.json`` (:mod:`bigseer.data.shard_index`, WebDataset's ``wids`` format), local or a URL;
* URLs of shards (``http(s)://``, ``s3://``, ``gs://``, brace patterns allowed), read through fsspec;
  an ``index.json`` beside them is used when present;
* any other file - a UTF-8 text list of image paths, one per line (relative paths are relative to
  the list file; blank lines and ``#`` comments ignored).

The result is a :class:`Catalog`: ``len()`` items in a fixed order, grouped in shards
(:meth:`Catalog.shard_counts`: a folder, a list or ``builtin`` is one shard), each loadable by index with
:meth:`Catalog.load`, which either returns a decoded image or raises SkipImage. Tables are flat numpy
arrays / one bytes blob, so forked DataLoader workers do not copy them page by page; tar shards keep
O(shards) state (member tables are read per opened shard).
"""

from __future__ import annotations

import glob
import logging
import os
import re
from typing import Callable

import numpy as np

from bigseer.data.builtin import DEFAULT_COUNT, builtin_image
from bigseer.data.decode import SkipImage, decode_for_crops, header_ok
from bigseer.data.files import walk_files
from bigseer.data.shard_index import DEFAULT_NAME, is_url, looks_like_index, read_index
from bigseer.data.tar_shards import TarShards
from bigseer.errors import DataError

log = logging.getLogger(__name__)

_PROBE = 16


class PathTable:
    """An immutable list of paths stored as one bytes blob plus offsets (fork/copy friendly)."""

    def __init__(self, paths: list[str]) -> None:
        encoded = [os.fsencode(p) for p in paths]
        self._blob = b"".join(encoded)
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        return os.fsdecode(self._blob[self._offsets[i]:self._offsets[i + 1]])


class _Part:
    kind = "?"

    def __len__(self) -> int:
        raise NotImplementedError

    def shard_counts(self) -> np.ndarray:
        """Samples per shard (a folder, list or builtin set is one shard)."""
        return np.asarray([len(self)], dtype=np.int64)

    def probe_items(self, probe: int) -> list[int]:
        """Evenly spaced items to check for images at start-up."""
        n = len(self)
        return sorted({int(v) for v in np.linspace(0, n - 1, min(n, probe))})

    def describe(self) -> str:
        raise NotImplementedError

    def load(self, i: int, plan: Callable, **kw):
        raise NotImplementedError

    def header_ok(self, i: int) -> bool:
        """True when item ``i`` opens as an image (header only)."""
        raise NotImplementedError


def _load_path(path: str, plan: Callable, **kw):
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise SkipImage("unreadable", f"{path}: {exc.strerror or exc}") from None
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
        except OSError as exc:
            raise SkipImage("unreadable", str(exc)) from None
        if size == 0:
            raise SkipImage("empty", path)
        return decode_for_crops(f, plan, **kw)


class _PathPart(_Part):
    def __init__(self, kind: str, origin: str, paths: list[str]) -> None:
        self.kind, self.origin, self.paths = kind, origin, PathTable(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self) -> str:
        return f"{self.kind} {self.origin} ({len(self)} files)"

    def load(self, i: int, plan: Callable, **kw):
        return _load_path(self.paths[i], plan, **kw)

    def header_ok(self, i: int) -> bool:
        try:
            with open(self.paths[i], "rb") as f:
                return header_ok(f)
        except OSError:
            return False


class _BuiltinPart(_Part):
    kind = "builtin"

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def describe(self) -> str:
        return f"builtin ({self.count} generated images)"

    def load(self, i: int, plan: Callable, **kw):
        img = builtin_image(i)
        return img, (1.0, 1.0), plan(img.width, img.height)

    def header_ok(self, i: int) -> bool:
        return True


def _split_top_level(spec: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in spec:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{a,b}`` and zero-padded numeric ``{000..123}`` ranges (nested, left to right)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[:m.start()], m.group(1), pattern[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        width = len(rng.group(1))
        step = 1 if hi >= lo else -1
        options = [str(v).zfill(width) for v in range(lo, hi + step, step)]
    else:
        options = body.split(",")
    return [x for opt in options for x in expand_braces(head + opt + tail)]


def _read_list(path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"cannot read data source {path}: {exc.strerror or exc}") from None
    if b"\0" in raw[:4096]:
        raise DataError(f"data source {path} is neither a directory, a .tar shard nor a text list of image paths")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"data source {path} is neither a directory, a .tar shard nor a UTF-8 "
                        f"text list of image paths") from None
    base = os.path.dirname(os.path.abspath(path))
    paths = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            paths.append(line if os.path.isabs(line) else os.path.join(base, line))
    if not paths:
        raise DataError(f"path list {path} names no files")
    return paths


def _part_for_path(path: str, cache: str | None = None) -> _Part | TarShards:
    if os.path.isdir(path):
        files = walk_files(path)
        if not files:
            raise DataError(f"data folder {path} contains no files")
        return _PathPart("folder", path, files)
    lower = path.lower()
    if lower.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        raise DataError(f"compressed tar shard {path} is not supported: use uncompressed .tar shards")
    if lower.endswith(".tar"):
        return TarShards(path, [path], cache_dir=cache)
    if looks_like_index(path):
        return _from_index(path, path, cache)
    return _PathPart("list", path, _read_list(path))


def _from_index(origin: str, index: str, cache: str | None):
    part = TarShards.from_index(origin, read_index(index), index, cache)
    part.verify()
    return part


def _index_beside(origin: str, shards: list[str], cache: str | None):
    """A TarShards from the ``index.json`` next to ``shards`` when it lists exactly them, else None."""
    base = shards[0].rsplit("/", 1)[0] if is_url(shards[0]) else os.path.dirname(shards[0])
    index = f"{base}/{DEFAULT_NAME}" if is_url(shards[0]) else os.path.join(base, DEFAULT_NAME)
    if not is_url(index) and not os.path.isfile(index):
        return None
    try:
        entries = read_index(index)
    except DataError:
        if is_url(index):
            return None
        raise
    by_url = {os.path.abspath(e.url) if not is_url(e.url) else e.url: e for e in entries}
    wanted = [os.path.abspath(u) if not is_url(u) else u for u in shards]
    if set(wanted) != set(by_url):
        log.info("%s does not list exactly the shards of %s; walking their headers instead", index, origin)
        return None
    log.info("using shard index %s for %s", index, origin)
    part = TarShards.from_index(origin, [by_url[u] for u in wanted], index, cache)
    part.verify()
    return part


def _remote_parts(spec: str, cache: str | None) -> list:
    urls = expand_braces(spec)
    if looks_like_index(spec):
        return [_from_index(spec, spec, cache)]
    if not all(u.lower().endswith(".tar") for u in urls):
        raise DataError(f"remote data {spec!r}: expected URLs of .tar shards or of a shard index (.json)")
    part = _index_beside(spec, urls, cache)
    if part is None:
        log.warning("no index.json beside %s: fetching every shard now to count its samples "
                    "(`bigseer index` writes one)", spec)
        part = TarShards(spec, urls, cache_dir=cache)
    return [part]


def _parts_for(spec: str, cache: str | None = None) -> list[_Part | TarShards]:
    if spec == "builtin" or spec.startswith("builtin:"):
        count = DEFAULT_COUNT
        if spec != "builtin":
            try:
                count = int(spec.split(":", 1)[1])
            except ValueError:
                count = 0
            if count < 1:
                raise DataError(f"bad data source {spec!r}: expected 'builtin' or 'builtin:N' with N >= 1")
        return [_BuiltinPart(count)]
    if is_url(spec):
        return _remote_parts(spec, cache)
    if any(c in spec for c in "*?[{"):
        matches = sorted({m for p in expand_braces(spec) for m in glob.glob(os.path.expanduser(p))})
        if not matches:
            raise DataError(f"data pattern {spec!r} matches no files")
        shards = [m for m in matches if m.lower().endswith(".tar")]
        others = [m for m in matches if not m.lower().endswith(".tar")]
        parts: list = []
        if shards:
            parts.append(_index_beside(spec, shards, cache) or TarShards(spec, shards, cache_dir=cache))
        return parts + [_part_for_path(m, cache) for m in others]
    path = os.path.expanduser(spec)
    if not os.path.exists(path):
        raise DataError(f"data source {spec!r} does not exist (expected a folder, a .tar shard or "
                        f"pattern, a text list of image paths, or 'builtin')")
    return [_part_for_path(path, cache)]


class Catalog:
    """All items of one ``--data`` string, in a fixed order (concatenation of its parts)."""

    def __init__(self, spec: str, parts: list) -> None:
        self.spec, self.parts = spec, parts
        self._starts = np.cumsum([0] + [len(p) for p in parts])

    def shard_counts(self) -> np.ndarray:
        """Samples per shard over all parts, in item order (what the sample order is built on)."""
        return np.concatenate([p.shard_counts() for p in self.parts])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def describe(self) -> str:
        """Short description for the training log, e.g. ``folder /data (1200 files)``."""
        return " + ".join(p.describe() for p in self.parts)

    def _locate(self, i: int) -> tuple[_Part, int]:
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self.parts[k], i - int(self._starts[k])

    def load(self, i: int, plan: Callable, **kw):
        """Decode item ``i`` for the crop ``plan``; returns (rgb, (sx, sy), plans) or raises SkipImage."""
        part, j = self._locate(i)
        return part.load(j, plan, **kw)

    def check_has_images(self, probe: int = _PROBE) -> None:
        """DataError unless every part has an image among ``probe`` evenly spaced items."""
        for part in self.parts:
            n = len(part)
            if n == 0:
                raise DataError(f"data source {part.describe()} holds no samples")
            picks = part.probe_items(probe)
            if not any(part.header_ok(j) for j in picks):
                what = "any" if len(picks) == n else f"any of {len(picks)} sampled"
                raise DataError(f"data source {part.describe()}: not {what} file is a readable image")


def open_source(spec: str, check: bool = True, shard_cache: str | None = None) -> Catalog:
    """Resolve a ``--data`` string into a :class:`Catalog`; DataError if it cannot be used. ``shard_cache``:
    the node-local directory for remote shards (None: ``BIGSEER_SHARD_CACHE``, else under the temp dir)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"bad data source {spec!r}: expected a folder, .tar shards, a path list or 'builtin'")
    catalog = Catalog(spec, [p for item in _split_top_level(spec) for p in _parts_for(item, shard_cache)])
    if len(catalog) == 0:
        raise DataError(f"data source {spec!r} holds no samples")
    if check:
        catalog.check_has_images()
    return catalog
