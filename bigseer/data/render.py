"""SampleRenderer: decode one catalog item and render all its crops (shared by the stream and ``scan``)."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
from PIL import Image

from bigseer.data.decode import SkipImage
from bigseer.data.multicrop import (
    AugmentConfig,
    CropGroup,
    normalization,
    normalize_uint8,
    plan_crops,
    render_crop,
    render_crop_into,
)

if TYPE_CHECKING:
    from bigseer.data.sources import Catalog

log = logging.getLogger(__name__)

DEFAULT_MIN_SIDE = 16


def load_crop_kernels() -> None:
    """Import the CPU crop kernels, which compile (or load from numba's cache) on import: before loader workers
    fork, so that they inherit them. Says so in the log when that took a while (the first time on a machine)."""
    if "bigseer.data.resize_kernels" in sys.modules:
        return
    t0 = time.perf_counter()
    import bigseer.data.augment_kernels  # noqa: F401
    import bigseer.data.resize_kernels  # noqa: F401

    spent = time.perf_counter() - t0
    if spent > 3.0:
        log.info("compiled the CPU crop kernels in %.1f s (numba; once per machine, cached afterwards)", spent)


def rgbx_array(img: Image.Image) -> np.ndarray:
    """A PIL image's pixels as a read-only uint8 (H, W, 4) RGBX array (X undefined): one copy of PIL's own
    4-byte pixels, as the CPU crop path reads them (an RGB array would be padded crop by crop)."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    return np.frombuffer(rgb.tobytes("raw", "RGBX"), np.uint8).reshape(rgb.height, rgb.width, 4)


def shared_empty(shape: tuple[int, ...]) -> torch.Tensor:
    """An empty float32 tensor in shared memory (as torch's default_collate allocates in DataLoader workers), so
    that handing it to the main process copies nothing (a CPU tensor outside shared memory is copied into it
    when pickled)."""
    storage = torch.empty(0, dtype=torch.float32)._typed_storage()._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.float32).new(storage).view(shape)


class SampleRenderer:
    """Decode one catalog item and render all its crops (shared by the stream and ``scan``).

    ``device=None`` (default): the CPU path, crops are uint8 ``HxWx3`` numpy arrays
    (:func:`bigseer.data.multicrop.render_crop`). ``device="cuda"`` (or ``"cpu"``, which the tests
    use): the tensor path of :mod:`bigseer.data.tensor_augment` on that device, crops are uint8
    ``HxWx3`` tensors there; JPEGs decode with nvjpeg on CUDA. Use the CUDA path in the main
    process (or spawned workers), never in forked DataLoader workers.
    ``device="cuda"`` without CUDA raises ConfigError here, before any work.
    ``turbo=False`` decodes JPEGs with PIL instead of simplejpeg (ablation; same crops within
    the bound in decode.py).
    :meth:`render` gives one sample's uint8 crops; the stream builds batches with :meth:`new_batch`,
    :meth:`fill` and :meth:`finish` (on the CPU path the crop kernel writes the normalised float32 crops
    straight into the batch).
    """

    def __init__(self, catalog: Catalog, groups: list[CropGroup], aug: AugmentConfig,
                 min_side: int = DEFAULT_MIN_SIDE, max_pixels: int | None = None, reduce: bool = True,
                 device: str | torch.device | None = None, turbo: bool = True) -> None:
        self.catalog, self.groups, self.aug = catalog, groups, aug
        self.device = None
        if device is not None:
            from bigseer.data.tensor_augment import resolve_device

            self.device = resolve_device(device)
        self.decode_kw: dict[str, Any] = {"min_side": min_side, "max_pixels": max_pixels, "reduce": reduce}
        if not turbo:
            self.decode_kw["turbo"] = False
        if self.device is not None:
            self.decode_kw["device"] = str(self.device)
        else:  # JPEGs as simplejpeg's RGBX array: no HxWx3 -> PIL copy, the resize kernel reads it in place
            self.decode_kw["arrays"] = True
            load_crop_kernels()
        self.norm = normalization(aug)
        self._warned = False

    def render(self, item: int, rng: np.random.Generator) -> list:
        """One uint8 ``HxWx3`` crop per plan, in group order (arrays, or tensors on ``device``);
        raises SkipImage."""
        img, scale, plans = self._decode(item, rng)
        with self._processing(item):
            if self.device is None:
                return [render_crop(img, scale, p) for p in plans]
            from bigseer.data.tensor_augment import as_chw_uint8, render_crop_tensor

            chw = as_chw_uint8(img, self.device)
            return [render_crop_tensor(chw, scale, p) for p in plans]

    def new_batch(self, batch_size: int, shared: bool = False) -> list[torch.Tensor]:
        """The tensors :meth:`fill` renders ``batch_size`` samples into, one per crop group: on the CPU path
        the float32 ``[count, B, 3, S, S]`` batch itself (in shared memory with ``shared``, as a DataLoader
        worker hands it over: pickling then copies nothing), on the tensor path uint8 buffers on ``device``."""
        if self.device is not None:
            return self.new_buffers(batch_size)
        shapes = [(g.count, batch_size, 3, g.size, g.size) for g in self.groups]
        return [shared_empty(shape) if shared else torch.empty(shape, dtype=torch.float32) for shape in shapes]

    def fill(self, batch: list[torch.Tensor], b: int, item: int, rng: np.random.Generator) -> None:
        """Render ``item``'s crops into slot ``b`` of :meth:`new_batch`; on the CPU path normalised by the crop
        kernel as it writes them (:func:`~bigseer.data.multicrop.render_crop_into`). Raises SkipImage (the
        slot then holds whatever was written: the next sample for it overwrites every crop)."""
        if self.device is not None:
            self.place(batch, b, self.render(item, rng))
            return
        img, scale, plans = self._decode(item, rng)
        with self._processing(item):
            k = 0
            for gi, g in enumerate(self.groups):
                for c in range(g.count):
                    render_crop_into(img, scale, plans[k], batch[gi][c, b].numpy(), self.norm)
                    k += 1

    def finish(self, batch: list[torch.Tensor], shared: bool = False) -> list[torch.Tensor]:
        """The normalised float32 ``[count, B, 3, S, S]`` crops of a filled batch: as they are on the CPU path,
        :func:`~bigseer.data.multicrop.normalize_uint8` of the tensor path's buffers (into shared memory with
        ``shared``)."""
        if self.device is None:
            return batch
        return [normalize_uint8(buf, self.aug, out=shared_empty(buf.movedim(-1, -3).shape) if shared else None)
                for buf in batch]

    def _decode(self, item: int, rng: np.random.Generator) -> tuple[Any, tuple[float, float], list]:
        """The item's decoded pixels (PIL-decoded ones as one RGBX array on the CPU path), scale and crop plans;
        raises SkipImage."""
        img, scale, plans = self.catalog.load(
            item, lambda w, h: plan_crops(w, h, self.groups, self.aug, rng), **self.decode_kw)
        if self.device is None and isinstance(img, Image.Image):  # PIL's decoders (PNG, WebP, CMYK, ...)
            with self._processing(item):
                img = rgbx_array(img)  # one copy out of PIL's 4-byte pixels, which the resize kernel reads
        return img, scale, plans

    @contextlib.contextmanager
    def _processing(self, item: int) -> Iterator[None]:
        """An image PIL decoded but the crop code cannot process is skipped as corrupt, and said once."""
        try:
            yield
        except SkipImage:
            raise
        except Exception as exc:
            if not self._warned:
                log.warning("skipping item %d: %s: %s", item, type(exc).__name__, exc, exc_info=True)
                self._warned = True
            raise SkipImage("corrupt", f"{type(exc).__name__}: {exc}") from None

    def new_buffers(self, batch_size: int) -> list[torch.Tensor]:
        """Empty uint8 ``[count, B, S, S, 3]`` batch buffers, one per crop group, on ``device`` (CPU
        when None); fill with :meth:`place`, then :func:`~bigseer.data.multicrop.normalize_uint8`."""
        return [torch.empty((g.count, batch_size, g.size, g.size, 3), dtype=torch.uint8, device=self.device)
                for g in self.groups]

    def place(self, buffers: list[torch.Tensor], b: int, crops: list) -> None:
        """Copy one sample's crops (from :meth:`render`) into slot ``b`` of :meth:`new_buffers`."""
        k = 0
        for gi, g in enumerate(self.groups):
            for c in range(g.count):
                if isinstance(crops[k], np.ndarray):
                    buffers[gi][c, b].numpy()[...] = crops[k]
                else:
                    buffers[gi][c, b] = crops[k]
                k += 1
