"""What ``bigseer curate`` hands to ``bigseer pretrain --data``: a text list of the selected files, or, for
images inside tar shards, new shards holding the selected members (bytes copied, not re-encoded) with
their index."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Sequence

from bigseer.atomic import write_text_atomic
from bigseer.data.shard_index import ShardEntry, write_index
from bigseer.errors import DataError

LIST_FILE = "list.txt"
SHARDS_DIR = "shards"


def _ext(data: bytes) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return {"JPEG": "jpg", "MPO": "jpg"}.get(img.format or "", (img.format or "img").lower())
    except Exception:  # noqa: BLE001 - embedded images decoded once; keep the bytes whatever PIL says now
        return "img"


def write_selection(out: str | os.PathLike[str], ids: Sequence[int], origins: Sequence[str],
                    max_count: int = 10000) -> Path:
    """Write the selection into ``out`` and return what ``--data`` takes: ``out/list.txt`` for files,
    ``out/shards/index.json`` for tar members (``<shard>#<member>`` origins)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any(o.startswith("builtin:") for o in origins):
        raise DataError("curate: builtin images have no files to list; write them with `bigseer sample-data DIR` "
                        "and embed DIR instead")
    if not any("#" in o and not os.path.exists(o) for o in origins):
        return write_text_atomic(out / LIST_FILE, "".join(os.path.abspath(o) + "\n" for o in origins))
    return _write_shards(out / SHARDS_DIR, ids, origins, max_count)


def _write_shards(folder: Path, ids: Sequence[int], origins: Sequence[str], max_count: int) -> Path:
    from bigseer.data.tar_shards import TarShards

    folder.mkdir(parents=True, exist_ok=True)
    opened: dict[str, TarShards] = {}
    entries: list[ShardEntry] = []
    for s, lo in enumerate(range(0, len(ids), max_count)):
        shard = folder / f"shard-{s:06d}.tar"
        tmp = shard.with_name(f".tmp-{shard.name}")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i, origin in zip(ids[lo:lo + max_count], origins[lo:lo + max_count]):
                url, member = origin.rsplit("#", 1)
                part = opened.get(url) or opened.setdefault(url, TarShards(url, [url]))
                data = part.read(int(member))
                info = tarfile.TarInfo(f"{int(i):09d}.{_ext(data)}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, shard)
        entries.append(ShardEntry(str(shard), min(max_count, len(ids) - lo), shard.stat().st_size))
    return write_index(folder / "index.json", entries, name="curated")
