"""One pass of a source through decode + multi-crop: decoded / skipped counts and images/s."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bigseer.data.decode import SkipImage
from bigseer.data.multicrop import AugmentConfig, CropGroup, parse_crops
from bigseer.data.render import DEFAULT_MIN_SIDE, SampleRenderer
from bigseer.data.sources import open_source
from bigseer.errors import ConfigError

_CHUNK = 16


@dataclass
class ScanResult:
    """Outcome of :func:`scan_source`."""

    description: str
    decoded: int
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.decoded / self.seconds if self.seconds > 0 else 0.0


class _ScanDataset(IterableDataset):
    """Worker ``w`` of ``W`` renders items ``w, w+W, ...`` below ``limit``, in chunks."""

    def __init__(self, renderer: SampleRenderer, limit: int, seed: int) -> None:
        super().__init__()
        self.renderer, self.limit, self.seed = renderer, limit, seed

    def __iter__(self) -> Iterator[tuple[int, dict[str, int]]]:
        info = get_worker_info()
        w, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        decoded, skipped = 0, Counter[str]()
        for n, item in enumerate(range(w, self.limit, workers), 1):
            try:
                self.renderer.render(item, np.random.default_rng([self.seed, 0x5CA7, item]))
                decoded += 1
            except SkipImage as exc:
                skipped[exc.reason] += 1
            if n % _CHUNK == 0:
                yield decoded, dict(skipped)
                decoded, skipped = 0, Counter()
        yield decoded, dict(skipped)


def scan_source(source: str, crops: str | list[CropGroup] = "2x224+4x96", *, limit: int | None = None,
                num_workers: int = 0, seed: int = 0, min_side: int = DEFAULT_MIN_SIDE,
                max_pixels: int | None = None, augment: AugmentConfig | None = None) -> ScanResult:
    """Decode and multi-crop the first ``limit`` items (default: all) of ``source`` once."""
    groups = parse_crops(crops)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be an integer >= 1, got {limit!r}")
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
    catalog = open_source(source)
    n = len(catalog) if limit is None else min(limit, len(catalog))
    renderer = SampleRenderer(catalog, groups, augment or AugmentConfig(), min_side, max_pixels)
    dataset = _ScanDataset(renderer, n, seed)
    result = ScanResult(catalog.describe(), 0)
    skipped: Counter[str] = Counter()
    start = time.perf_counter()
    chunks = iter(dataset) if num_workers == 0 else DataLoader(dataset, batch_size=None,
                                                               num_workers=num_workers)
    for decoded, skips in chunks:
        result.decoded += decoded
        skipped.update(skips)
    result.seconds = time.perf_counter() - start
    result.skipped = dict(sorted(skipped.items()))
    return result
