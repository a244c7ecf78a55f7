"""MultiCropStream: the infinite, resumable stream of multi-crop batches, the same for any world size.

The stream of a run is a sequence of *global positions* ``0, 1, 2, ...`` (:mod:`bigseer.data.order`:
which sample each position reads is a function of the seed and the position only). Batch ``g`` of a
stream started at position ``P`` is step ``g`` of the run: rank ``r`` of ``W`` reads positions
``P + g*G + r*B .. P + g*G + (r+1)*B - 1`` (``B`` per-rank batch, ``G = B*W``). The augmentation of
position ``p`` is seeded by ``(seed, p)``; a bad image is counted by reason and replaced by
``GlobalOrder.replacement(p, attempt)`` with the same seed. So every batch is a pure function of its
positions: DataLoader workers take batches round-robin (worker ``w`` builds ``w, w + workers, ...``),
and a run resumed at position ``P`` on any number of ranks reads exactly the samples the uninterrupted
run would have read.

Gradient accumulation (``accumulate=N``) treats a micro-batch like a rank: a step's ``G = B*W*N`` positions are
read by ``W*N`` virtual ranks, micro-batch ``m`` of rank ``r`` being virtual rank ``m*W + r``; the stream yields
the ``N`` micro-batches of a step in turn. So micro-batch ``m`` of every rank together is a contiguous block of
the step (what SyncBN groups see), and 1 rank x ``N`` reads what ``N`` ranks read.
"""

from __future__ import annotations

import logging
import signal
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bigseer.data.decode import SkipImage
from bigseer.data.multicrop import AugmentConfig, CropGroup, format_crops, parse_crops
from bigseer.data.order import GlobalOrder, rank_positions
from bigseer.data.render import DEFAULT_MIN_SIDE, SampleRenderer
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
                 workers: int, start_position: int, lanes: int, max_tries: int, accumulate: int = 1) -> None:
        super().__init__()
        self.renderer, self.batch_size, self.seed = renderer, batch_size, seed
        self.rank, self.world_size, self.workers, self.accumulate = rank, world_size, workers, accumulate
        self.global_batch = batch_size * world_size * accumulate
        self.start_position, self.max_tries = start_position, max_tries
        self.order = GlobalOrder(renderer.catalog.shard_counts(), seed, lanes)
        self._bad: dict[int, str] = {}

    def __iter__(self) -> Iterator[MultiCropBatch]:
        info = get_worker_info()
        g = info.id if info is not None else 0
        while True:
            yield self.make_batch(g)
            g += self.workers

    def _fill_one(self, batch: list[torch.Tensor], b: int, item: int, position: int) -> None:
        reason = self._bad.get(item)
        if reason is not None:
            raise SkipImage(reason)
        try:
            self.renderer.fill(batch, b, item, np.random.default_rng([self.seed, 0xA06, position]))
        except SkipImage as exc:
            self._bad[item] = exc.reason
            raise

    def make_batch(self, g: int) -> MultiCropBatch:
        """Batch ``g`` after the start position (a pure function of its global positions): micro-batch
        ``g mod N`` of step ``g // N``."""
        step, micro = divmod(g, self.accumulate)
        positions = rank_positions(self.start_position + step * self.global_batch, self.global_batch,
                                   micro * self.world_size + self.rank, self.world_size * self.accumulate)
        in_worker = get_worker_info() is not None
        batch = self.renderer.new_batch(self.batch_size, shared=in_worker)  # on the decode device
        skipped: Counter[str] = Counter()
        items = []
        for b, p in enumerate(positions):
            item = self.order.item(p)
            for attempt in range(1, self.max_tries + 2):
                try:
                    self._fill_one(batch, b, item, p)
                    break
                except SkipImage as exc:
                    skipped[exc.reason] += 1
                    if attempt > self.max_tries:
                        raise DataError(
                            f"no decodable image after {attempt} tries for position {p}; skips so far in "
                            f"this batch: {dict(skipped)} - is the source mostly broken?") from None
                    item = self.order.replacement(p, attempt)
            items.append(item)
        crops = self.renderer.finish(batch, shared=in_worker)
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
    ``start_position``: the global position of the first batch (samples the run consumed before);
    ``position`` is the global position of the next batch (save it in the checkpoint; any world size
    resumes with ``start_position=position``). ``lanes``: the run's lane count (default: the global
    batch; keep the first run's value when resuming, see :mod:`bigseer.data.order`).
    ``reduced_decode=False`` decodes JPEGs at full size (same crop geometry; slower);
    ``device="cuda"`` decodes (nvjpeg) and crops on that GPU in this process (``num_workers=0``), batches
    arrive there; ``device="cpu"`` runs the same tensor code on CPU (tests);
    ``min_side`` / ``max_pixels`` bound usable image sizes (skip reasons too_small / too_large);
    ``max_tries`` bad images in a row for one batch slot raise DataError (never a stall);
    ``worker_timeout_s > 0`` turns a worker that produces nothing for that long into a DataError;
    ``accumulate=N``: each step is ``N`` batches of ``batch_size`` (micro-batches, see the module docstring).
    Bad settings raise ConfigError and unusable sources DataError, before any worker starts.
    """

    def __init__(self, source: str, crops: str | list[CropGroup], batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, num_workers: int = 0, start_position: int = 0, *,
                 lanes: int | None = None, augment: AugmentConfig | None = None, min_side: int = DEFAULT_MIN_SIDE,
                 max_pixels: int | None = None, max_tries: int = DEFAULT_MAX_TRIES,
                 reduced_decode: bool = True, prefetch_factor: int = 2, pin_memory: bool = False,
                 worker_timeout_s: float = 0.0, multiprocessing_context: str | None = None,
                 device: str | torch.device | None = None, shard_cache: str | None = None,
                 accumulate: int = 1) -> None:
        for name, value, lo in (("batch_size", batch_size, 1), ("world_size", world_size, 1),
                                ("accumulate", accumulate, 1),
                                ("num_workers", num_workers, 0), ("start_position", start_position, 0),
                                ("rank", rank, 0), ("min_side", min_side, 1), ("max_tries", max_tries, 0),
                                ("prefetch_factor", prefetch_factor, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")
        if rank >= world_size:
            raise ConfigError(f"rank must be < world_size ({world_size}), got {rank}")
        if device is not None and num_workers:
            raise ConfigError(f"decoding on device {device!r} runs in the calling process: num_workers must be 0, "
                              f"got {num_workers}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        if isinstance(worker_timeout_s, bool) or not isinstance(worker_timeout_s, (int, float)) \
                or worker_timeout_s < 0:
            raise ConfigError(f"worker_timeout_s must be >= 0 (0 = wait forever), got {worker_timeout_s!r}")
        self.groups = parse_crops(crops)
        self.augment = augment or AugmentConfig()
        self.catalog = open_source(source, shard_cache=shard_cache)
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.num_workers = num_workers
        self.accumulate = accumulate
        self.global_batch = batch_size * world_size * accumulate
        self.lanes = self.global_batch if lanes is None else lanes
        if isinstance(self.lanes, bool) or not isinstance(self.lanes, int) or self.lanes < 1:
            raise ConfigError(f"lanes must be an integer >= 1, got {lanes!r}")
        self.position = start_position
        self._dataset = _MultiCropDataset(
            SampleRenderer(self.catalog, self.groups, self.augment, min_side, max_pixels, reduced_decode,
                           device=device),
            batch_size, seed, rank, world_size, max(1, num_workers), start_position, self.lanes, max_tries,
            accumulate)
        self.device = self._dataset.renderer.device  # None: the CPU (numpy) path
        self._loader_kw = {"prefetch_factor": prefetch_factor, "pin_memory": pin_memory,
                           "timeout": float(worker_timeout_s),
                           "multiprocessing_context": multiprocessing_context}
        self._it: Iterator[MultiCropBatch] | None = None

    def describe(self) -> str:
        """One line for the training log: source kind and size, crops, batch and workers."""
        return (f"{self.catalog.describe()}; crops {format_crops(self.groups)}; batch {self.batch_size} "
                f"per rank{f' x {self.accumulate} micro-batches' if self.accumulate > 1 else ''}; "
                f"rank {self.rank}/{self.world_size}; "
                + (f"decoded on {self.device}" if self.device is not None else f"{self.num_workers} workers"))

    def __len__(self) -> int:
        raise TypeError("MultiCropStream is infinite")

    def state_dict(self) -> dict:
        """The world-size-free stream state: the next global position and what defines the order."""
        return {"position": self.position, "seed": self.seed, "lanes": self.lanes, "samples": len(self.catalog),
                "crops": format_crops(self.groups)}

    def _start(self) -> Iterator[MultiCropBatch]:
        self._dataset.start_position = self.position
        if self.num_workers == 0:
            return iter(self._dataset)
        kw: dict[str, Any] = dict(self._loader_kw)
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
            self.position += self.global_batch // self.accumulate
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
