"""Shard indexes in WebDataset's ``wids`` format: per-shard sample counts and sizes, read in O(shards).

    {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": "...",
     "shardlist": [{"url": "shard-000000.tar", "nsamples": 10000, "filesize": 1073741312}, ...]}

``url`` is relative to the index's own location (or absolute / a URL), so ``wids.ShardListDataset`` reads
bigseer's index and bigseer reads one ``wids`` wrote. ``nsamples`` counts samples the way
:mod:`bigseer.data.tar_members` does (one per key); ``filesize`` detects a stale index: a shard whose size
differs is one clear error naming the shard and the command that rebuilds the index.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from bigseer.atomic import write_text_atomic
from bigseer.errors import DataError

KIND = "wids-shard-index-v1"
DEFAULT_NAME = "index.json"


@dataclass(frozen=True)
class ShardEntry:
    """One shard of an index: where it is, how many samples, how many bytes."""

    url: str
    nsamples: int
    filesize: int


def is_url(spec: str) -> bool:
    """True for ``scheme://...`` (http, https, s3, gs, ...); False for local paths and ``file://``."""
    scheme, sep, _ = spec.partition("://")
    return bool(sep) and scheme.isalnum() and scheme != "file"


def resolve(base: str, url: str) -> str:
    """``url`` relative to the directory (or URL prefix) ``base``."""
    if is_url(url) or os.path.isabs(url):
        return url
    return f"{base.rstrip('/')}/{url}" if is_url(base) else os.path.normpath(os.path.join(base, url))


def base_of(index_location: str) -> str:
    """The directory / URL prefix relative shard urls of an index are resolved against."""
    if is_url(index_location):
        return index_location.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(index_location))


def stale_message(index: str, shard: str, field: str, got: int, want: int) -> str:
    return (f"shard index {index} is stale: {shard} has {got} {field}, the index says {want}; rebuild it with "
            f"`bigseer index {index}` (or delete it to walk the shards at start-up)")


def write_index(path: str | os.PathLike[str], entries: Iterable[ShardEntry], name: str = "",
                meta: dict[str, Any] | None = None) -> Path:
    """Write ``entries`` as a wids index at ``path`` atomically; local urls are stored relative to it.
    ``meta`` is merged into the ``"bigseer"`` record (e.g. ``{"reencode": {...}}`` from ``bigseer shard``)."""
    path = Path(path)
    base = str(path.parent.resolve())
    shardlist: list[dict[str, Any]] = []
    for e in entries:
        url = e.url if is_url(e.url) else os.path.relpath(os.path.abspath(e.url), base)
        shardlist.append({"url": url, "nsamples": int(e.nsamples), "filesize": int(e.filesize)})
    doc = {"__kind__": KIND, "wids_version": 1, "name": name or path.parent.name,
           "bigseer": {"written": time.strftime("%Y-%m-%dT%H:%M:%S"), "samples": sum(s["nsamples"] for s in shardlist),
                       **(meta or {})},
           "shardlist": shardlist}
    return write_text_atomic(path, json.dumps(doc, indent=0) + "\n")


def parse_index(text: str, location: str) -> list[ShardEntry]:
    """The shards of an index document (urls resolved against ``location``); DataError if it is not one."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"shard index {location} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("__kind__") != KIND or not isinstance(doc.get("shardlist"), list):
        raise DataError(f"{location} is not a shard index (expected __kind__ {KIND!r} and a shardlist)")
    base = base_of(location)
    if isinstance(doc.get("base"), str):  # wids: an explicit base for relative urls
        base = resolve(base, doc["base"])
    out = []
    for i, s in enumerate(doc["shardlist"]):
        try:
            out.append(ShardEntry(resolve(base, str(s["url"])), int(s["nsamples"]), int(s.get("filesize", -1))))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"shard index {location}: entry {i} needs url and nsamples, got {s!r}") from None
    if not out:
        raise DataError(f"shard index {location} lists no shards")
    return out


def read_index(location: str) -> list[ShardEntry]:
    """Read a local or remote (fsspec URL) index."""
    if is_url(location):
        from bigseer.data.remote import read_small

        text = read_small(location).decode("utf-8", "replace")
    else:
        try:
            text = Path(location).read_text()
        except OSError as exc:
            raise DataError(f"cannot read shard index {location}: {exc.strerror or exc}") from None
    return parse_index(text, location)


def read_reencode(location: str) -> dict[str, Any] | None:
    """The re-encoding ``bigseer shard --max_side/--quality`` recorded in a local index (max_side, quality,
    format, exif_orientation), or None when its images are stored as they were."""
    try:
        doc = json.loads(Path(location).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read shard index {location}: {exc}") from None
    record = doc.get("bigseer", {}).get("reencode") if isinstance(doc, dict) else None
    return record if isinstance(record, dict) else None


def looks_like_index(spec: str) -> bool:
    """A ``--data`` part naming an index file (``*.json``)."""
    return spec.lower().endswith(".json")
