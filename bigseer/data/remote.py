"""Remote tar shards (``http(s)://``, ``s3://``, ``gs://`` through fsspec) fetched whole into a node cache.

A worker that opens a remote shard calls :meth:`ShardCache.local_path`: the shard is downloaded to a temp
name in the cache directory, checked against the expected size, and renamed; an ``flock`` on a lock file
makes the workers (and ranks) of a node fetch each shard once. The cache is bounded: least recently used
complete shards are deleted past ``max_bytes`` (a reader that has one open keeps its data).

Failures never raise out of a read: dropped connections, timeouts and short transfers are retried up to
``retries`` times with exponential back-off; a missing object (HTTP 404) is not retried. A shard that
cannot be fetched raises :class:`ShardUnavailable` (its samples are skipped as ``unreachable``); a
transfer still short after the retries is kept as a ``.partial`` file (members past its end are skipped
as ``truncated``). A server that reports another size than the index is a stale index (DataError).

Settings come from the environment so that DataLoader workers inherit them: ``BIGSEER_SHARD_CACHE``
(directory), ``BIGSEER_SHARD_CACHE_GB`` (bound, default 16), ``BIGSEER_REMOTE_RETRIES`` (default 4),
``BIGSEER_REMOTE_TIMEOUT_S`` (default 60).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bigseer.errors import DataError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class ShardUnavailable(Exception):
    """A remote shard could not be fetched; ``reason`` is a skip reason, ``detail`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class SizeMismatch(DataError):
    """The store reports ``got`` bytes for a shard the caller expected ``want`` of (a stale index); the caller,
    which knows the index, words the error (:func:`bigseer.data.shard_index.stale_message`)."""

    def __init__(self, url: str, got: int, want: int) -> None:
        super().__init__(f"{url} has {got} bytes, {want} expected")
        self.url, self.got, self.want = url, got, want


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    timeout = float(os.environ.get("BIGSEER_REMOTE_TIMEOUT_S", "60"))
    proto = url.split("://", 1)[0]
    kwargs: dict[str, Any] = {}
    if proto in ("http", "https"):
        import aiohttp

        kwargs["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=None, sock_read=timeout,
                                                                    sock_connect=timeout)}
    fs, path = fsspec.core.url_to_fs(url, **kwargs)
    return fs, path


def _missing(exc: BaseException) -> bool:
    return isinstance(exc, FileNotFoundError) or "404" in str(exc) or "NoSuchKey" in type(exc).__name__


def read_small(url: str) -> bytes:
    """Read a small remote file (an index) whole, with the same retries; DataError if impossible."""
    retries = int(os.environ.get("BIGSEER_REMOTE_RETRIES", "4"))
    last: BaseException | None = None
    for attempt in range(retries + 1):
        try:
            fs, path = _fs(url)
            with fs.open(path, "rb") as f:
                return f.read()
        except Exception as exc:  # noqa: BLE001 - any transport error is retried, then reported
            last = exc
            if _missing(exc):
                break
            time.sleep(min(8.0, 0.25 * 2 ** attempt))
    raise DataError(f"cannot read {url}: {type(last).__name__}: {last}")


class ShardCache:
    """Node-local cache of whole remote shards (see the module docstring)."""

    def __init__(self, root: str | None = None, max_bytes: int | None = None, retries: int | None = None,
                 backoff_s: float = 0.25) -> None:
        env = os.environ
        default_root = os.path.join(tempfile.gettempdir(), f"bigseer-shards-{os.getuid()}")
        self.root = Path(root or env.get("BIGSEER_SHARD_CACHE") or default_root)
        gb = float(env.get("BIGSEER_SHARD_CACHE_GB", "16"))
        self.max_bytes = int(max_bytes if max_bytes is not None else gb * 2 ** 30)
        self.retries = int(retries if retries is not None else env.get("BIGSEER_REMOTE_RETRIES", "4"))
        self.backoff_s = backoff_s
        self.root.mkdir(parents=True, exist_ok=True)

    def _name(self, url: str) -> Path:
        digest = hashlib.sha1(url.encode()).hexdigest()[:16]
        return self.root / f"{digest}-{os.path.basename(url.split('?', 1)[0])[-80:]}"

    def local_path(self, url: str, expected_size: int = -1) -> str:
        """A local file holding the shard at ``url`` (complete, or ``.partial`` when the transfer stayed short).
        SizeMismatch when the store reports another size than ``expected_size`` (>= 0)."""
        final = self._name(url)
        partial = final.with_name(final.name + ".partial")
        for path in (final, partial):
            if path.exists():
                os.utime(path)
                return str(path)
        with open(final.with_name(final.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for path in (final, partial):
                if path.exists():  # another worker fetched it while we waited
                    return str(path)
            got = self._download(url, expected_size, final)
        self._evict(keep=got)
        return str(got)

    def _download(self, url: str, expected: int, final: Path) -> Path:
        tmp = final.with_name(f".tmp-{final.name}.{os.getpid()}")
        last = ""
        best = -1
        for attempt in range(self.retries + 1):
            try:
                fs, path = _fs(url)
                reported = fs.size(path)
                if expected >= 0 and reported is not None and int(reported) != expected:
                    raise SizeMismatch(url, int(reported), expected)
                want = int(reported) if reported is not None else expected
                n = 0
                with fs.open(path, "rb", block_size=_CHUNK) as src, open(tmp, "wb") as dst:
                    while True:
                        chunk = src.read(_CHUNK)
                        if not chunk:
                            break
                        dst.write(chunk)
                        n += len(chunk)
                if want < 0 or n == want:
                    os.replace(tmp, final)
                    return final
                last = f"short transfer ({n} of {want} bytes)"
                if n > best:
                    best = n
                    os.replace(tmp, final.with_name(final.name + ".partial.tmp"))
            except DataError:
                tmp.unlink(missing_ok=True)
                raise
            except Exception as exc:  # noqa: BLE001 - dropped connections, timeouts, HTTP errors
                tmp.unlink(missing_ok=True)
                if _missing(exc):
                    raise ShardUnavailable("unreachable", f"{url}: not found ({type(exc).__name__})") from None
                last = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            log.warning("shard %s: attempt %d of %d failed (%s)", url, attempt + 1, self.retries + 1, last)
            if attempt < self.retries:
                time.sleep(min(8.0, self.backoff_s * 2 ** attempt))
        kept = final.with_name(final.name + ".partial.tmp")
        if kept.exists():
            partial = final.with_name(final.name + ".partial")
            os.replace(kept, partial)
            log.warning("shard %s: kept %d bytes after %d attempts (%s); members past the end are skipped",
                        url, best, self.retries + 1, last)
            return partial
        raise ShardUnavailable("unreachable", f"{url}: {last} after {self.retries + 1} attempts")

    def _evict(self, keep: Path) -> None:
        files = [p for p in self.root.iterdir() if p.is_file() and not p.name.startswith(".")
                 and not p.name.endswith((".lock", ".tmp"))]
        total = sum(p.stat().st_size for p in files)
        for p in sorted(files, key=lambda q: q.stat().st_atime):
            if total <= self.max_bytes:
                break
            if p != keep:
                total -= p.stat().st_size
                p.unlink(missing_ok=True)


_CACHE: ShardCache | None = None


def default_cache(root: str | None = None) -> ShardCache:
    """This process's cache in ``root`` (None: ``BIGSEER_SHARD_CACHE``, else under the temp dir), created on first
    use with the environment's other settings."""
    global _CACHE
    root = root or os.environ.get("BIGSEER_SHARD_CACHE")
    if _CACHE is None or (root is not None and _CACHE.root != Path(root)):
        _CACHE = ShardCache(root)
    return _CACHE
