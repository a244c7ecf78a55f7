"""Data sources behind one ``--data`` string: folders, path lists, tar shards, ``builtin``.

``open_source("DATA")`` auto-detects each comma-separated part (commas inside ``{...}`` belong to
brace patterns):

* ``builtin`` or ``builtin:N`` - N procedurally drawn images (default 512), no files;
* a directory - every non-hidden file below it, recursively, whatever its extension;
* a ``.tar`` file, glob or brace pattern (``shards-{0000..0099}.tar``) - WebDataset-style shards
  read with :mod:`tarfile` directly: one sample per key (path up to the first dot of the basename),
  its image member (or, lacking one, its first member, which is then skipped as ``not_image``);
* any other file - a UTF-8 text list of image paths, one per line (relative paths are relative to
  the list file; blank lines and ``#`` comments ignored).

The result is a :class:`Catalog`: ``len()`` items in a fixed order, each loadable by index with
:meth:`Catalog.load`, which either returns a decoded image or raises SkipImage. Item tables are
flat numpy arrays / one bytes blob, so forked DataLoader workers do not copy them page by page.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import re
import tarfile
from typing import Callable

import numpy as np
from PIL import Image

from bigseer.data.builtin import DEFAULT_COUNT, builtin_image
from bigseer.data.decode import SkipImage, decode_bytes, decode_for_crops
from bigseer.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    "jpg jpeg jpe jfif png gif bmp webp tif tiff ppm pgm pbm pnm tga ico jp2 j2k avif heic".split())
MAX_MEMBER_BYTES = 512 * 1024 * 1024
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


def _header_ok(fp) -> bool:
    try:
        with Image.open(fp) as img:
            return img.size[0] > 0 and img.size[1] > 0
    except Exception:
        return False


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
                return _header_ok(f)
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


class _TarPart(_Part):
    kind = "tar"

    def __init__(self, origin: str, shards: list[str]) -> None:
        self.origin, self.shards, self.bad_shards = origin, shards, []
        idx, offsets, sizes = [], [], []
        for s, shard in enumerate(shards):
            try:
                members = _index_tar(shard)
            except DataError as exc:
                if len(shards) == 1:
                    raise
                log.warning("skipping unreadable shard: %s", exc)
                self.bad_shards.append(shard)
                continue
            for off, size in members:
                idx.append(s)
                offsets.append(off)
                sizes.append(size)
        if len(self.bad_shards) == len(shards):
            raise DataError(f"none of the {len(shards)} tar shards of {origin} can be read")
        self.shard_idx = np.asarray(idx, dtype=np.int32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self._fds: dict[int, int] = {}
        self._pid = -1

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fds"], state["_pid"] = {}, -1
        return state

    def __len__(self) -> int:
        return len(self.offsets)

    def describe(self) -> str:
        bad = f", {len(self.bad_shards)} unreadable shards skipped" if self.bad_shards else ""
        return f"tar {self.origin} ({len(self.shards)} shards, {len(self)} samples{bad})"

    def _read(self, i: int) -> bytes:
        if self._pid != os.getpid():  # never share descriptors with a forked parent/child
            self._fds, self._pid = {}, os.getpid()
        s = int(self.shard_idx[i])
        fd = self._fds.get(s)
        if fd is None:
            if len(self._fds) >= 16:
                os.close(self._fds.pop(next(iter(self._fds))))
            try:
                fd = os.open(self.shards[s], os.O_RDONLY)
            except OSError as exc:
                raise SkipImage("unreadable", f"{self.shards[s]}: {exc.strerror or exc}") from None
            self._fds[s] = fd
        size = int(self.sizes[i])
        if size > MAX_MEMBER_BYTES:
            raise SkipImage("too_large", f"tar member of {size} bytes")
        try:
            data = os.pread(fd, size, int(self.offsets[i]))
        except OSError as exc:
            raise SkipImage("unreadable", str(exc)) from None
        if len(data) < size:
            raise SkipImage("truncated", f"tar member cut short ({len(data)} of {size} bytes)")
        return data

    def load(self, i: int, plan: Callable, **kw):
        return decode_bytes(self._read(i), plan, **kw)

    def header_ok(self, i: int) -> bool:
        try:
            data = self._read(i)
        except SkipImage:
            return False
        return bool(data) and _header_ok(io.BytesIO(data))


def _index_tar(path: str) -> list[tuple[int, int]]:
    """(data offset, size) of one member per sample key, in tar order."""
    by_key: dict[str, list[tuple[str, int, int]]] = {}
    try:
        tf = tarfile.open(path, "r:")
    except (OSError, tarfile.TarError) as exc:
        raise DataError(f"cannot read tar shard {path}: {exc}") from None
    with tf:
        try:
            for m in tf:
                if not m.isfile():
                    continue
                d, base = os.path.split(m.name)
                key, _, ext = base.partition(".")
                by_key.setdefault(os.path.join(d, key), []).append((ext.lower(), m.offset_data, m.size))
        except (tarfile.TarError, EOFError, OSError):
            pass  # truncated shard: keep the members read so far; short reads are skipped later
    out = []
    for members in by_key.values():
        pick = next((m for m in members if m[0].rsplit(".", 1)[-1] in IMAGE_EXTENSIONS), members[0])
        out.append((pick[1], pick[2]))
    return out


def _split_top_level(spec: str) -> list[str]:
    parts, depth, cur = [], 0, []
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


def _walk(root: str) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=None):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
    return files


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


def _part_for_path(path: str) -> _Part:
    if os.path.isdir(path):
        files = _walk(path)
        if not files:
            raise DataError(f"data folder {path} contains no files")
        return _PathPart("folder", path, files)
    lower = path.lower()
    if lower.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        raise DataError(f"compressed tar shard {path} is not supported: use uncompressed .tar shards")
    if lower.endswith(".tar"):
        return _TarPart(path, [path])
    return _PathPart("list", path, _read_list(path))


def _parts_for(spec: str) -> list[_Part]:
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
    if any(c in spec for c in "*?[{"):
        matches = sorted({m for p in expand_braces(spec) for m in glob.glob(os.path.expanduser(p))})
        if not matches:
            raise DataError(f"data pattern {spec!r} matches no files")
        shards = [m for m in matches if m.lower().endswith(".tar")]
        others = [m for m in matches if not m.lower().endswith(".tar")]
        parts: list[_Part] = [_TarPart(spec, shards)] if shards else []
        return parts + [_part_for_path(m) for m in others]
    path = os.path.expanduser(spec)
    if not os.path.exists(path):
        raise DataError(f"data source {spec!r} does not exist (expected a folder, a .tar shard or "
                        f"pattern, a text list of image paths, or 'builtin')")
    return [_part_for_path(path)]


class Catalog:
    """All items of one ``--data`` string, in a fixed order (concatenation of its parts)."""

    def __init__(self, spec: str, parts: list[_Part]) -> None:
        self.spec, self.parts = spec, parts
        self._starts = np.cumsum([0] + [len(p) for p in parts])

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
            picks = sorted({int(v) for v in np.linspace(0, n - 1, min(n, probe))})
            if not any(part.header_ok(j) for j in picks):
                what = "any" if len(picks) == n else f"any of {len(picks)} sampled"
                raise DataError(f"data source {part.describe()}: not {what} file is a readable image")


def open_source(spec: str, check: bool = True) -> Catalog:
    """Resolve a ``--data`` string into a :class:`Catalog`; DataError if it cannot be used."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"bad data source {spec!r}: expected a folder, .tar shards, a path list or 'builtin'")
    parts = [p for item in _split_top_level(spec) for p in _parts_for(item)]
    catalog = Catalog(spec, parts)
    if len(catalog) == 0:
        raise DataError(f"data source {spec!r} holds no samples")
    if check:
        catalog.check_has_images()
    return catalog
