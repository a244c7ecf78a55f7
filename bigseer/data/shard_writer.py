"""Turn a folder or a path list into WebDataset-style tar shards plus their index (``bigseer shard``), and
index existing shards (``bigseer index``).

Shards are written to a temp name and renamed when complete, so a finished shard is never partial; the
progress (next source item, next shard number, skip counts) is kept in ``.shard-progress.json`` beside
them, and an interrupted run continues from the last complete shard. Images are stored as they are (no
re-encoding), one sample per image: ``<9-digit key>.<original extension>``; files that do not open as
images (header check) are skipped and counted by reason.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from bigseer.atomic import write_text_atomic
from bigseer.data.shard_index import DEFAULT_NAME, ShardEntry, is_url, write_index
from bigseer.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PROGRESS = ".shard-progress.json"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}


def parse_size(text: str | int) -> int:
    """``"1GB"`` / ``"512MiB"`` / ``4096`` -> bytes; ConfigError otherwise."""
    if isinstance(text, int) and text > 0:
        return text
    s = str(text).strip().upper().replace(" ", "")
    num = s.rstrip("KMGTIB")
    try:
        value = float(num) * _UNITS[s[len(num):]]
    except (ValueError, KeyError):
        raise ConfigError(f"size {text!r} is invalid: use bytes or a unit like 512MB, 1GB, 2GiB") from None
    if value <= 0:
        raise ConfigError(f"size {text!r} must be > 0")
    return int(value)


@dataclass
class ShardResult:
    """What ``write_shards`` produced."""

    shards: list[Path]
    index: Path
    samples: int
    skipped: dict[str, int] = field(default_factory=dict)


def source_paths(src: str) -> list[str]:
    from bigseer.data.files import walk_files
    from bigseer.data.sources import _read_list

    if os.path.isdir(src):
        return walk_files(src)
    if os.path.isfile(src):
        return _read_list(src)
    raise DataError(f"shard source {src!r} is neither a folder nor a text list of image paths")


def _check_image(path: str) -> tuple[bytes | None, str]:
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None, "unreadable"
    if not data:
        return None, "empty"
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.size[0] <= 0 or img.size[1] <= 0:
                return None, "corrupt"
    except Image.DecompressionBombError:
        return None, "too_large"
    except Exception:  # noqa: BLE001 - anything PIL cannot open is not an image
        return None, "not_image"
    return data, ""


def write_shards(src: str, pattern: str, max_size: int | str = "1GB", max_count: int = 0,
                 progress: Callable[[int], None] | None = None) -> ShardResult:
    """Write the images of ``src`` into shards named ``pattern % shard_number`` (e.g. ``out/shard-%06d.tar``),
    each at most ``max_size`` bytes (and ``max_count`` samples if > 0), then the index beside them."""
    limit = parse_size(max_size)
    try:
        pattern % 0
    except TypeError:
        raise ConfigError(f"shard pattern {pattern!r} needs one %d-style field, e.g. out/shard-%06d.tar") from None
    out_dir = Path(pattern % 0).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = source_paths(src)
    state_file = out_dir / PROGRESS
    state: dict[str, Any] = json.loads(state_file.read_text()) if state_file.is_file() else \
        {"source": src, "pattern": pattern, "next_item": 0, "next_shard": 0, "shards": [], "skipped": {}}
    if state["source"] != src or state["pattern"] != pattern:
        raise ConfigError(f"{state_file} belongs to another run ({state['source']} -> {state['pattern']}); "
                          "use another output folder or delete it")
    if state["next_item"]:
        log.info("resuming: %d of %d source files done, %d shards written", state["next_item"], len(paths),
                 len(state["shards"]))
    i = state["next_item"]
    while i < len(paths):
        shard = Path(pattern % state["next_shard"])
        tmp = shard.with_name(f".tmp-{shard.name}")
        count, skipped = 0, dict(state["skipped"])
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            while i < len(paths) and (max_count <= 0 or count < max_count):
                data, reason = _check_image(paths[i])
                if data is None:
                    skipped[reason] = skipped.get(reason, 0) + 1
                else:
                    if count and tar.offset + 512 + -(-len(data) // 512) * 512 + 1024 > limit:
                        break
                    ext = os.path.splitext(paths[i])[1].lower().lstrip(".") or "img"
                    info = tarfile.TarInfo(f"{i:09d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                    count += 1
                i += 1
                if progress is not None:
                    progress(1)
            end = tar.offset + 1024  # the two end-of-archive blocks; tarfile pads further to 10 KiB
        os.truncate(tmp, end)
        if count:
            os.replace(tmp, shard)
            state["shards"].append({"url": str(shard), "nsamples": count, "filesize": shard.stat().st_size})
            state["next_shard"] += 1
        else:
            tmp.unlink(missing_ok=True)
        state["next_item"], state["skipped"] = i, skipped
        write_text_atomic(state_file, json.dumps(state))
    entries = [ShardEntry(s["url"], s["nsamples"], s["filesize"]) for s in state["shards"]]
    if not entries:
        raise DataError(f"{src}: no readable images to shard (skipped: {state['skipped']})")
    index = write_index(out_dir / DEFAULT_NAME, entries, name=out_dir.name)
    return ShardResult([Path(e.url) for e in entries], index, sum(e.nsamples for e in entries),
                       dict(state["skipped"]))


def index_shards(urls: list[str], progress: Callable[[int], None] | None = None) -> list[ShardEntry]:
    """Walk every shard once (remote ones through the shard cache) and return their index entries."""
    from bigseer.data.tar_shards import TarShards

    entries = []
    for url in urls:
        part = TarShards(url, [url])
        entries.append(ShardEntry(url, int(part.counts[0]), int(part.sizes[0])))
        if progress is not None:
            progress(1)
    return entries


def default_index_path(urls: list[str]) -> str:
    """``index.json`` in the directory of local shards; URLs need an explicit output path."""
    if is_url(urls[0]):
        raise ConfigError("remote shards: give --out PATH for the index (then upload it beside the shards)")
    return os.path.join(os.path.dirname(os.path.abspath(urls[0])), DEFAULT_NAME)
