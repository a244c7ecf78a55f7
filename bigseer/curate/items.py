"""One catalog item for embedding: its encoded bytes, their sha1, its origin and a centre crop.

Reads go through the data stack: path parts (folders, lists) read the file, tar parts
``TarShards.read`` (member bytes, remote shards through the node cache), and the same robust decoder
as pretraining (:func:`bigseer.data.decode.decode_bytes`: reduced-size JPEG decode, every failure a
``SkipImage`` with one of ``SKIP_REASONS``). The crop is the evaluation view: the short side scaled to
``resize``, the centre ``crop`` x ``crop`` (as ``bigseer eval``), rendered by
:func:`bigseer.data.multicrop.render_crop`. The builtin source has no bytes: its hash is of the pixels.
:func:`thumbnail` is the pixel-level copy descriptor ``bigseer dedup`` verifies trunk matches with.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass

import numpy as np

from bigseer.data.decode import SkipImage, decode_bytes
from bigseer.data.multicrop import CropPlan, render_crop
from bigseer.data.shard_index import is_url
from bigseer.data.sources import Catalog

log = logging.getLogger(__name__)


@dataclass
class Item:
    """A decoded item: catalog id, origin (path, ``shard#member`` or ``builtin:i``), sha1 of the encoded
    bytes, full oriented size, and the ``crop`` x ``crop`` x 3 uint8 view (None when skipped, with ``reason``)."""

    id: int
    origin: str
    sha1: str = ""
    size: tuple[int, int] = (0, 0)
    pixels: np.ndarray | None = None
    reason: str = ""


class CentrePlan:
    """A crop plan function: the centre square that becomes ``crop`` px after scaling the short side to
    ``resize``. Records the image's full oriented size in ``.size``."""

    def __init__(self, resize: int, crop: int) -> None:
        self.resize, self.crop = resize, crop
        self.size = (0, 0)

    def __call__(self, w: int, h: int) -> list[CropPlan]:
        self.size = (w, h)
        side = min(w, h) * min(1.0, self.crop / self.resize)
        x0, y0 = (w - side) / 2, (h - side) / 2
        return [CropPlan((x0, y0, x0 + side, y0 + side), self.crop, False)]


THUMB_SIDE = 16


def thumbnail(pixels: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """Grey ``side`` x ``side`` box-filtered view of a crop, zero-mean and L2-normalised (float16
    ``[side * side]``): the dot product of two is the normalised cross-correlation of the images' coarse
    layouts, high for resized / re-encoded / slightly cropped copies. A flat image gives zeros."""
    from PIL import Image

    grey = Image.fromarray(pixels).convert("L").resize((side, side), Image.Resampling.BOX)
    v = np.asarray(grey, dtype=np.float32).ravel()
    v -= v.mean()
    norm = float(np.linalg.norm(v))
    return (v / norm if norm > 1e-3 else np.zeros_like(v)).astype(np.float16)


def _part_of(catalog: Catalog, i: int):
    starts = np.cumsum([0] + [len(p) for p in catalog.parts])
    k = int(np.searchsorted(starts, i, side="right")) - 1
    return catalog.parts[k], i - int(starts[k])


def origin_of(catalog: Catalog, i: int) -> str:
    """Where item ``i`` comes from: its absolute path, ``<shard>#<member>`` or ``builtin:<i>``."""
    part, j = _part_of(catalog, i)
    if hasattr(part, "paths"):
        return os.path.abspath(part.paths[j])
    if hasattr(part, "urls"):
        k = int(np.searchsorted(part.starts, j, side="right")) - 1
        url = part.urls[k] if is_url(part.urls[k]) else os.path.abspath(part.urls[k])
        return f"{url}#{j - int(part.starts[k])}"
    return f"builtin:{j}"


def read_bytes(catalog: Catalog, i: int) -> bytes | None:
    """Encoded bytes of item ``i`` (None for generated images); raises SkipImage."""
    part, j = _part_of(catalog, i)
    if hasattr(part, "paths"):
        path = part.paths[j]
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise SkipImage("unreadable", f"{path}: {exc.strerror or exc}") from None
        if not data:
            raise SkipImage("empty", path)
        return data
    if hasattr(part, "read"):
        return part.read(j)
    return None


def load_item(catalog: Catalog, i: int, resize: int, crop: int, min_side: int = 16,
              max_pixels: int | None = None) -> Item:
    """Read, hash and decode item ``i``; a skipped item comes back with ``reason`` set (never raises SkipImage)."""
    item = Item(i, origin_of(catalog, i))
    plan = CentrePlan(resize, crop)
    kw = {"min_side": min_side, "max_pixels": max_pixels}
    try:
        data = read_bytes(catalog, i)
        if data is None:
            img, scale, plans = catalog.load(i, plan, **kw)
            item.sha1 = hashlib.sha1(img.tobytes()).hexdigest()
        else:
            item.sha1 = hashlib.sha1(data).hexdigest()
            img, scale, plans = decode_bytes(data, plan, **kw)
        item.pixels = render_crop(img, scale, plans[0])
        item.size = (int(plan.size[0]), int(plan.size[1]))
    except SkipImage as exc:
        item.reason = exc.reason
    except Exception as exc:  # noqa: BLE001 - an image PIL decoded but cannot process: counted, not fatal
        item.reason = "corrupt"
        log.warning("skipping %s: %s: %s", item.origin, type(exc).__name__, exc)
    return item


def example_image(source: str, origin: str, side: int = 96):
    """A small RGB PIL thumbnail of a sample for report grids (a grey square when it cannot be read)."""
    from PIL import Image

    img: Image.Image
    try:
        if "#" in origin and not os.path.exists(origin):
            from bigseer.data.tar_shards import TarShards

            url, member = origin.rsplit("#", 1)
            part = TarShards(url, [url])
            data = part.read(int(member))
            img = Image.open(io.BytesIO(data))
        elif origin.startswith("builtin:"):
            from bigseer.data.builtin import builtin_image

            img = builtin_image(int(origin.split(":", 1)[1]))
        else:
            img = Image.open(origin)
        img = img.convert("RGB")
        img.thumbnail((side, side))
        return img
    except Exception:  # noqa: BLE001 - a thumbnail must never fail a report
        return Image.new("RGB", (side, side), (128, 128, 128))
