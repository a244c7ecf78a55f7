"""SEER data pipeline: sources -> robust decode -> multi-crop -> per-resolution batches.

Public entry points: :func:`parse_crops` / :class:`CropGroup` (crop specs),
:class:`MultiCropStream` / :class:`MultiCropBatch` (the training stream), :func:`open_source`
(``--data`` strings), :func:`scan_source` (``bigseer scan``).
"""

from __future__ import annotations

from bigseer.data.decode import SKIP_REASONS, SkipImage, format_skipped
from bigseer.data.multicrop import DEFAULT_CROPS, AugmentConfig, CropGroup, format_crops, parse_crops
from bigseer.data.scan import ScanResult, scan_source
from bigseer.data.sources import Catalog, open_source
from bigseer.data.stream import MultiCropBatch, MultiCropStream

__all__ = [
    "AugmentConfig", "Catalog", "CropGroup", "DEFAULT_CROPS", "MultiCropBatch", "MultiCropStream",
    "SKIP_REASONS", "ScanResult", "SkipImage", "format_crops", "format_skipped", "open_source", "parse_crops",
    "scan_source",
]
