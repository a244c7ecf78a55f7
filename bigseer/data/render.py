"""SampleRenderer: decode one catalog item and render all its crops (shared by the stream and ``scan``)."""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from bigseer.data.decode import SkipImage
from bigseer.data.multicrop import AugmentConfig, CropGroup, plan_crops, render_crop

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
        else:  # JPEGs as simplejpeg's RGBX array: no HxWx3 -> PIL copy, torch's resize reads it in place
            self.decode_kw["arrays"] = True
            load_crop_kernels()
        self._warned = False

    def render(self, item: int, rng: np.random.Generator) -> list:
        """One uint8 ``HxWx3`` crop per plan, in group order (arrays, or tensors on ``device``);
        raises SkipImage."""
        img, scale, plans = self.catalog.load(
            item, lambda w, h: plan_crops(w, h, self.groups, self.aug, rng), **self.decode_kw)
        try:
            if self.device is None:
                if isinstance(img, Image.Image):  # PIL's decoders (PNG, WebP, CMYK, ...): one copy out of PIL's
                    img = rgbx_array(img)  # 4-byte pixels, which the resize kernel reads in place crop by crop
                return [render_crop(img, scale, p) for p in plans]
            from bigseer.data.tensor_augment import as_chw_uint8, render_crop_tensor

            chw = as_chw_uint8(img, self.device)
            return [render_crop_tensor(chw, scale, p) for p in plans]
        except Exception as exc:  # an image PIL decoded but cannot process: skip, but say so once
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
