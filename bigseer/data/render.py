"""SampleRenderer: decode one catalog item and render all its crops (shared by the stream and ``scan``)."""

from __future__ import annotations

import logging

import numpy as np

from bigseer.data.decode import SkipImage
from bigseer.data.multicrop import AugmentConfig, CropGroup, plan_crops, render_crop
from bigseer.data.sources import Catalog

log = logging.getLogger(__name__)

DEFAULT_MIN_SIDE = 16


class SampleRenderer:
    """Decode one catalog item and render all its crops (shared by the stream and ``scan``)."""

    def __init__(self, catalog: Catalog, groups: list[CropGroup], aug: AugmentConfig,
                 min_side: int = DEFAULT_MIN_SIDE, max_pixels: int | None = None, reduce: bool = True) -> None:
        self.catalog, self.groups, self.aug = catalog, groups, aug
        self.decode_kw = {"min_side": min_side, "max_pixels": max_pixels, "reduce": reduce}
        self._warned = False

    def render(self, item: int, rng: np.random.Generator) -> list[np.ndarray]:
        """uint8 ``HxWx3`` arrays, one per crop in group order; raises SkipImage."""
        img, scale, plans = self.catalog.load(
            item, lambda w, h: plan_crops(w, h, self.groups, self.aug, rng), **self.decode_kw)
        try:
            return [render_crop(img, scale, p) for p in plans]
        except Exception as exc:  # an image PIL decoded but cannot process: skip, but say so once
            if not self._warned:
                log.warning("skipping item %d: %s: %s", item, type(exc).__name__, exc, exc_info=True)
                self._warned = True
            raise SkipImage("corrupt", f"{type(exc).__name__}: {exc}") from None
