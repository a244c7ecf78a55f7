"""MultiCropStream: the infinite, sharded, resumable stream of multi-crop batches.

Batches are numbered ``g = 0, 1, 2, ...`` per rank. With ``W = max(1, num_workers)`` workers,
batch ``g`` is built by virtual worker ``v = g % W`` as its local batch ``j = g // W`` from
positions ``j*B .. j*B+B-1`` of slot ``rank*W + v`` (see :mod:`bigseer.data.order`), and the
augmentation randomness of its ``b``-th image is seeded by ``(seed, rank, world, W, g, b)``.
A bad image is counted by reason and replaced by ``SampleOrder.replacement`` (same slot, same
pass), with the same augmentation seed. So batch ``g`` is a pure function of its position:
``start_batch=k`` starts real worker ``w`` at batch ``k + w`` and the DataLoader's round-robin
order yields ``k, k+1, ...`` exactly as the uninterrupted stream would, with no replay.
"""

from __future__ import annotations

import logging
import signal
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bigseer.data.decode import SkipImage
from bigseer.data.multicrop import AugmentConfig, CropGroup, format_crops, normalize_uint8, parse_crops
from bigseer.data.render import DEFAULT_MIN_SIDE, SampleRenderer
from bigseer.data.order import SampleOrder
from bigseer.data.sources import open_source
from bigseer.errors import BigseerError, ConfigError, DataError

log = logging.getLogger(__name__)

DEFAULT_MAX_TRIES = 64


@dataclass
class MultiCropBatch:
    """One batch: ``crops[i]`` is ``[n_i, B, 3, S_i, S_i]`` float32 normalised; ``skipped`` counts
    images skipped while building this batch, by reason; ``samples`` the catalog indices used."""

    crops: list[torch.Tensor]
    skipped: dict[str, int]
    samples: torch.Tensor | None = None


class _MultiCropDataset(IterableDataset):
    def __init__(self, renderer: SampleRenderer, batch_size: int, seed: int, rank: int, world_size: int,
                 workers: int, start_batch: int, max_tries: int) -> None:
        super().__init__()
        self.renderer, self.batch_size, self.seed = renderer, batch_size, seed
        self.rank, self.world_size, self.workers = rank, world_size, workers
        self.start_batch, self.max_tries = start_batch, max_tries
        self.order = SampleOrder(len(renderer.catalog), seed, rank, world_size, workers)
        self._bad: dict[int, str] = {}

    def __iter__(self) -> Iterator[MultiCropBatch]:
        info = get_worker_info()
        w = info.id if info is not None else 0
        g = self.start_batch + w
        while True:
            yield self.make_batch(g)
            g += self.workers

    def _rng(self, g: int, b: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 0xA06, self.rank, self.world_size, self.workers, g, b])

    def _render_one(self, item: int, g: int, b: int) -> list[np.ndarray]:
        reason = self._bad.get(item)
        if reason is not None:
            raise SkipImage(reason)
        try:
            return self.renderer.render(item, self._rng(g, b))
        except SkipImage as exc:
            self._bad[item] = exc.reason
            raise

    def make_batch(self, g: int) -> MultiCropBatch:
        """Batch number ``g`` of this rank (a pure function of g and the stream settings)."""
        B = self.batch_size
        v, j = g % self.workers, g // self.workers
        slot = self.order.slot(v)
        bufs = [torch.empty((grp.count, B, grp.size, grp.size, 3), dtype=torch.uint8)
                for grp in self.renderer.groups]
        views = [buf.numpy() for buf in bufs]
        skipped: Counter[str] = Counter()
        items = []
        for b in range(B):
            q = j * B + b
            item = self.order.item(slot, q)
            for attempt in range(1, self.max_tries + 2):
                try:
                    arrays = self._render_one(item, g, b)
                    break
                except SkipImage as exc:
                    skipped[exc.reason] += 1
                    if attempt > self.max_tries:
                        raise DataError(
                            f"no decodable image after {attempt} tries for batch {g} (slot {slot}); "
                            f"skips so far in this batch: {dict(skipped)} - is the source mostly broken?"
                        ) from None
                    item = self.order.replacement(slot, q, attempt)
            items.append(item)
            k = 0
            for gi, grp in enumerate(self.renderer.groups):
                for c in range(grp.count):
                    views[gi][c, b] = arrays[k]
                    k += 1
        crops = [normalize_uint8(buf, self.renderer.aug) for buf in bufs]
        return MultiCropBatch(crops, dict(skipped), torch.tensor(items, dtype=torch.int64))


def _summary(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) == 1:
        return f"{type(exc).__name__}: {lines[0]}"
    return f"{lines[0]} {lines[-1]}"


def _dead_workers(it: object) -> str:
    """'worker 0 (pid 123) killed by SIGKILL; ...' for DataLoader workers that have exited."""
    out = []
    for i, proc in enumerate(getattr(it, "_workers", None) or []):
        if proc.exitcode is None:  # error path only: give a just-killed worker time to be reaped
            proc.join(timeout=0.25)
        code = proc.exitcode
        if code is None or code == 0:
            continue
        if code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        out.append(f"worker {i} (pid {proc.pid}) {how}")
    return "; ".join(out)


class MultiCropStream:
    """Infinite iterable of :class:`MultiCropBatch` for one rank (see the module docstring).

    ``source``: a ``--data`` string (:func:`bigseer.data.sources.open_source`); ``crops``: a spec
    like ``"2x224+4x96"`` or a list of CropGroup; ``batch_size``: images per rank and batch.
    ``start_batch=k`` resumes at batch k; ``position`` is the index of the next batch to be
    yielded (save it in the checkpoint; resume with ``start_batch=position``).
    ``reduced_decode=False`` decodes JPEGs at full size (same crop geometry; slower);
    ``min_side`` / ``max_pixels`` bound usable image sizes (skip reasons too_small / too_large);
    ``max_tries`` bad images in a row for one batch slot raise DataError (never a stall);
    ``worker_timeout_s > 0`` turns a worker that produces nothing for that long into a DataError.
    Bad settings raise ConfigError and unusable sources DataError, before any worker starts.
    """

    def __init__(self, source: str, crops: str | list[CropGroup], batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, num_workers: int = 0, start_batch: int = 0, *,
                 augment: AugmentConfig | None = None, min_side: int = DEFAULT_MIN_SIDE,
                 max_pixels: int | None = None, max_tries: int = DEFAULT_MAX_TRIES,
                 reduced_decode: bool = True, prefetch_factor: int = 2, pin_memory: bool = False,
                 worker_timeout_s: float = 0.0, multiprocessing_context: str | None = None) -> None:
        for name, value, lo in (("batch_size", batch_size, 1), ("world_size", world_size, 1),
                                ("num_workers", num_workers, 0), ("start_batch", start_batch, 0),
                                ("rank", rank, 0), ("min_side", min_side, 1), ("max_tries", max_tries, 0),
                                ("prefetch_factor", prefetch_factor, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")
        if rank >= world_size:
            raise ConfigError(f"rank must be < world_size ({world_size}), got {rank}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        if isinstance(worker_timeout_s, bool) or not isinstance(worker_timeout_s, (int, float)) \
                or worker_timeout_s < 0:
            raise ConfigError(f"worker_timeout_s must be >= 0 (0 = wait forever), got {worker_timeout_s!r}")
        self.groups = parse_crops(crops)
        self.augment = augment or AugmentConfig()
        self.catalog = open_source(source)
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.num_workers = num_workers
        self.position = start_batch
        self._dataset = _MultiCropDataset(
            SampleRenderer(self.catalog, self.groups, self.augment, min_side, max_pixels, reduced_decode),
            batch_size, seed, rank, world_size, max(1, num_workers), start_batch, max_tries)
        self._loader_kw = {"prefetch_factor": prefetch_factor, "pin_memory": pin_memory,
                           "timeout": float(worker_timeout_s),
                           "multiprocessing_context": multiprocessing_context}
        self._it: Iterator[MultiCropBatch] | None = None

    def describe(self) -> str:
        """One line for the training log: source kind and size, crops, batch and workers."""
        return (f"{self.catalog.describe()}; crops {format_crops(self.groups)}; batch {self.batch_size} "
                f"per rank; rank {self.rank}/{self.world_size}; {self.num_workers} workers")

    def __len__(self) -> int:
        raise TypeError("MultiCropStream is infinite")

    def state_dict(self) -> dict:
        """Stream position plus the settings a resume must repeat for the same samples."""
        return {"position": self.position, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "num_workers": self.num_workers,
                "batch_size": self.batch_size, "crops": format_crops(self.groups)}

    def _start(self) -> Iterator[MultiCropBatch]:
        self._dataset.start_batch = self.position
        if self.num_workers == 0:
            return iter(self._dataset)
        kw = dict(self._loader_kw)
        if kw["multiprocessing_context"] is None:
            del kw["multiprocessing_context"]
        loader = DataLoader(self._dataset, batch_size=None, num_workers=self.num_workers,
                            persistent_workers=True, **kw)
        return iter(loader)

    def __iter__(self) -> Iterator[MultiCropBatch]:
        while True:
            if self._it is None:
                self._it = self._start()
            try:
                batch = next(self._it)
            except StopIteration:
                self.close()
                raise DataError("data stream ended unexpectedly") from None
            except Exception as exc:
                try:
                    dead = _dead_workers(self._it)
                except Exception as late:  # torch's SIGCHLD handler names the dead worker
                    dead = _summary(late)
                try:
                    self.close()
                except Exception:
                    pass
                if isinstance(exc, BigseerError) and "\n" not in str(exc):
                    raise
                log.error("data loader failed%s", f" ({dead})" if dead else "", exc_info=True)
                cause = f"{dead} ({_summary(exc)})" if dead else _summary(exc)
                raise DataError(f"data loader worker failed: {cause}") from exc
            self.position += 1
            yield batch

    def close(self) -> None:
        """Stop the worker processes (a later iteration restarts them at ``position``)."""
        it, self._it = getattr(self, "_it", None), None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def __enter__(self) -> "MultiCropStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
