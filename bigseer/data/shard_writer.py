"""Turn a folder or a path list into WebDataset-style tar shards plus their index (``bigseer shard``), and
index existing shards (``bigseer index``).

Shards are written to a temp name and renamed when complete, so a finished shard is never partial; the
progress (next source item, next shard number, skip counts) is kept in ``.shard-progress.json`` beside
them, and an interrupted run continues from the last complete shard. Images are stored as they are (no
re-encoding), one sample per image: ``<9-digit key>.<original extension>``; files that do not open as
images (header check) are skipped and counted by reason.

With :class:`Reencode` (``bigseer shard --max_side N --quality Q``) every image is instead decoded, turned
upright (its EXIF orientation applied), shrunk so its longest side is at most N (never enlarged), and
stored as a JPEG of quality Q (``<key>.jpg``, no EXIF): smaller shards, and a loader that decodes ~N-px
JPEGs instead of camera-size ones. A full decode also catches damaged pixel data: such images are skipped
and counted by reason (``truncated``, ``corrupt``, ...). The settings are recorded in the index
(``"bigseer": {"reencode": {...}}``, :func:`bigseer.data.shard_index.read_reencode`) and in the progress
file (a resumed run must use the same ones).
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


@dataclass(frozen=True)
class Reencode:
    """Re-encode at shard time: longest side capped at ``max_side`` px (None: keep the size), JPEG ``quality``.
    Bad settings are one ConfigError line, raised here, before any work."""

    max_side: int | None = None
    quality: int = 90

    def __post_init__(self) -> None:
        n, q = self.max_side, self.quality
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(f"--max_side must be a whole number of pixels >= 1, got {n!r}")
        if isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= 100:
            raise ConfigError(f"--quality must be a JPEG quality from 1 to 100, got {q!r}")

    def record(self) -> dict[str, Any]:
        """What the index and the progress file record."""
        return {"max_side": self.max_side, "quality": self.quality, "format": "JPEG", "exif_orientation": "applied"}


def reencode_image(data: bytes, settings: Reencode) -> tuple[bytes | None, str]:
    """(JPEG bytes, "") of an upright image, longest side <= ``settings.max_side``; (None, skip reason) when
    it cannot be decoded. JPEGs shrink in the DCT first (PIL's draft, >= 2x the target), then an
    antialiased resize; grey images stay grey, everything else becomes RGB (alpha on white)."""
    from bigseer.data.decode import SkipImage, _check_size, _open, _pil_pixels, default_max_pixels
    from bigseer.data.orientation import TRANSPOSE

    try:
        img = _open(io.BytesIO(data))
        orientation, width, height = _check_size(img, default_max_pixels(), 1)
        target = (width, height)
        if settings.max_side and max(width, height) > settings.max_side:
            f = settings.max_side / max(width, height)
            target = (max(1, round(width * f)), max(1, round(height * f)))
        stored = (target[1], target[0]) if orientation >= 5 else target
        grey = img.mode in ("L", "1", "I;16", "I", "F")  # stored single-channel: kept grey (1 channel)
        # draft to >= 2x the target (then a real antialiased resize); _pil_pixels decodes and converts
        scale = min(1.0, 2.0 * stored[0] / img.size[0], 2.0 * stored[1] / img.size[1])
        pixels = _pil_pixels(img, scale, reduce=True)
    except SkipImage as exc:
        return None, exc.reason
    if grey:
        pixels = pixels.convert("L")  # R = G = B: lossless
    if pixels.size != stored:
        pixels = pixels.resize(stored, Image.Resampling.LANCZOS, reducing_gap=3.0)
    for op in TRANSPOSE.get(orientation, ()):
        pixels = pixels.transpose(op)
    out = io.BytesIO()
    pixels.save(out, "JPEG", quality=settings.quality)
    return out.getvalue(), ""


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
                 progress: Callable[[int], None] | None = None, reencode: Reencode | None = None) -> ShardResult:
    """Write the images of ``src`` into shards named ``pattern % shard_number`` (e.g. ``out/shard-%06d.tar``),
    each at most ``max_size`` bytes (and ``max_count`` samples if > 0), then the index beside them.
    ``reencode``: store upright, size-capped JPEGs instead of the files as they are (module docstring)."""
    limit = parse_size(max_size)
    record = reencode.record() if reencode is not None else None
    try:
        pattern % 0
    except TypeError:
        raise ConfigError(f"shard pattern {pattern!r} needs one %d-style field, e.g. out/shard-%06d.tar") from None
    out_dir = Path(pattern % 0).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = source_paths(src)
    state_file = out_dir / PROGRESS
    state: dict[str, Any] = json.loads(state_file.read_text()) if state_file.is_file() else \
        {"source": src, "pattern": pattern, "next_item": 0, "next_shard": 0, "shards": [], "skipped": {},
         "reencode": record}
    if state["source"] != src or state["pattern"] != pattern:
        raise ConfigError(f"{state_file} belongs to another run ({state['source']} -> {state['pattern']}); "
                          "use another output folder or delete it")
    if state.get("reencode") != record:
        raise ConfigError(f"{state_file} was written with re-encoding {state.get('reencode')}, this run asks for "
                          f"{record}: use the same settings, another output folder, or delete it")
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
                if data is not None and reencode is not None:
                    data, reason = reencode_image(data, reencode)
                if data is None:
                    skipped[reason] = skipped.get(reason, 0) + 1
                else:
                    if count and tar.offset + 512 + -(-len(data) // 512) * 512 + 1024 > limit:
                        break
                    ext = "jpg" if reencode is not None else \
                        (os.path.splitext(paths[i])[1].lower().lstrip(".") or "img")
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
    index = write_index(out_dir / DEFAULT_NAME, entries, name=out_dir.name,
                        meta={"reencode": record, "skipped": dict(state["skipped"])} if record else None)
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
