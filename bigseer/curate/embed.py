"""``bigseer embed``: a frozen trunk's pooled, L2-normalised embeddings of a whole pile, resumable, on 1..N ranks.

The catalog of ``bigseer.data.open_source(source)`` is cut into fixed parts of ``part_size`` items (a
function of the catalog only, never of the world size); the parts not yet committed are dealt round-robin
over the ranks. Each part is decoded (centre crop, :mod:`bigseer.curate.items`), embedded in batches that
restart at the part's first item (so a row's batch, and hence its kernels, do not depend on the world size)
and committed atomically (:mod:`bigseer.curate.store`) with each image's sha1 and 16x16 grey thumbnail
(the copy descriptor ``bigseer dedup`` verifies near pairs with). A killed run, restarted with the same
command on any number of ranks, computes only the parts that were not committed. Skipped images are counted by reason
per part and in the report.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bigseer.atomic import TMP_PREFIX, commit_dir, remove_stale, write_text_atomic
from bigseer.curate.items import THUMB_SIDE, Item, load_item, thumbnail
from bigseer.curate.store import (
    EMBEDDINGS_FILE,
    FORMAT,
    MANIFEST,
    PARTS,
    SAMPLES_FILE,
    VERSION,
    check_same_run,
    committed_parts,
    num_parts,
    part_name,
    read_manifest,
)
from bigseer.data import SKIP_REASONS, format_skipped, open_source
from bigseer.data.multicrop import AugmentConfig, normalize_uint8
from bigseer.distributed import get_rank, get_world_size, is_distributed
from bigseer.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class EmbedConfig:
    """What to embed, with which trunk, into which directory."""

    source: str
    weights: str
    out: str
    model: str | None = None
    part_size: int = 1024
    batch_size: int = 64
    resize: int = 256
    crop: int = 224
    layer: str = "res5"
    workers: int = 0
    device: str = "auto"
    min_side: int = 16
    max_pixels: int | None = None
    progress: bool = True

    def validate(self) -> None:
        for name in ("part_size", "batch_size", "resize", "crop", "min_side"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"embed: --{name} must be an integer >= 1, got {value!r}")
        if self.crop > self.resize:
            raise ConfigError(f"embed: --crop {self.crop} must be <= --resize {self.resize}")
        if self.workers < 0:
            raise ConfigError(f"embed: --workers must be >= 0, got {self.workers}")
        if self.layer not in ("res4", "res5"):
            raise ConfigError(f"embed: --layer {self.layer!r} must be res4 or res5")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"embed: --device {self.device!r} must be auto, cpu or cuda")


@dataclass
class EmbedResult:
    """Outcome of :func:`embed_source` on this rank (totals cover every committed part of the directory)."""

    root: str
    parts: int
    parts_before: int
    parts_computed: list[int] = field(default_factory=list)
    embedded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


class _Items(Dataset):
    def __init__(self, catalog: Any, ids: list[int], cfg: EmbedConfig) -> None:
        self.catalog, self.ids, self.cfg = catalog, ids, cfg

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, j: int) -> Item:
        c = self.cfg
        return load_item(self.catalog, self.ids[j], c.resize, c.crop, c.min_side, c.max_pixels)


def _identity(x: Any) -> Any:
    return x


def _barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def _broadcast(obj: Any) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("embed: --device cuda but CUDA is not available")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(choice)


def _manifest(cfg: EmbedConfig, catalog: Any, trunk: Any, dim: int) -> dict[str, Any]:
    weights = cfg.weights if "://" in cfg.weights else os.path.abspath(cfg.weights)
    return {"format": FORMAT, "version": VERSION, "source": cfg.source, "source_description": catalog.describe(),
            "samples": len(catalog), "part_size": cfg.part_size, "parts": num_parts(len(catalog), cfg.part_size),
            "dim": dim, "dtype": "float16", "normalized": "l2", "weights": weights,
            "model": asdict(trunk.params), "layer": cfg.layer, "resize": cfg.resize, "crop": cfg.crop}


@torch.no_grad()
def _embed_batch(trunk: Any, pixels: list[Any], layer: str, device: torch.device) -> np.ndarray:
    from bigseer.downstream.linear import pooled_features

    x = normalize_uint8(torch.from_numpy(np.stack(pixels)), AugmentConfig()).to(device)
    feats = pooled_features(trunk, x, layer).float()
    return torch.nn.functional.normalize(feats, dim=1).half().cpu().numpy()


def _commit_part(root: Path, k: int, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write part ``k`` (``embeddings``, ``thumbs``, the ids) under a temp name and rename it into place."""
    from safetensors.numpy import save_file

    tmp = root / PARTS / f"{TMP_PREFIX}{part_name(k)}.{os.getpid()}"
    tmp.mkdir(parents=True)
    save_file({**tensors, "ids": np.asarray(meta["ids"], dtype=np.int64)}, str(tmp / EMBEDDINGS_FILE))
    (tmp / SAMPLES_FILE).write_text(json.dumps(meta))
    return commit_dir(tmp, root / PARTS / part_name(k))


def _part_items(k: int, part_size: int, total: int) -> list[int]:
    return list(range(k * part_size, min(total, (k + 1) * part_size)))


def embed_source(cfg: EmbedConfig) -> EmbedResult:
    """Embed every item of ``cfg.source`` into ``cfg.out`` (see the module docstring); returns this rank's result."""
    from bigseer.downstream.linear import freeze, layer_width
    from bigseer.downstream.weights import load_trunk

    cfg.validate()
    rank, world = get_rank(), get_world_size()
    catalog = open_source(cfg.source)
    trunk = load_trunk(cfg.weights, cfg.model)
    device = _device(cfg.device)
    freeze(trunk).to(device)
    dim = layer_width(trunk, cfg.layer)
    root = Path(cfg.out)
    manifest = _manifest(cfg, catalog, trunk, dim)
    if (root / MANIFEST).exists():
        check_same_run(root, read_manifest(root), manifest)  # every rank raises the same error
    _barrier()
    if rank == 0:
        (root / PARTS).mkdir(parents=True, exist_ok=True)
        remove_stale(root / PARTS)
        if not (root / MANIFEST).exists():
            write_text_atomic(root / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    total_parts = manifest["parts"]
    pending = _broadcast(sorted(set(range(total_parts)) - committed_parts(root)) if rank == 0 else None)
    _barrier()
    mine = pending[rank::world]
    result = EmbedResult(str(root), total_parts, total_parts - len(pending))
    if rank == 0:
        log.info("embed %s: %d parts of %d items, %d committed before, %d to compute on %d rank(s)",
                 catalog.describe(), total_parts, cfg.part_size, result.parts_before, len(pending), world)
    ids = [i for k in mine for i in _part_items(k, cfg.part_size, len(catalog))]
    loader = DataLoader(_Items(catalog, ids, cfg), batch_size=None, num_workers=cfg.workers, collate_fn=_identity)
    bar = None
    if rank == 0 and cfg.progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(ids), desc="embed", unit="img", dynamic_ncols=True)
    start = time.perf_counter()
    items = iter(loader)
    for k in mine:
        t0 = time.perf_counter()
        part_ids = _part_items(k, cfg.part_size, len(catalog))
        good: list[Item] = []
        rows: list[np.ndarray] = []
        skipped: dict[str, int] = {}
        skipped_items: list[list] = []
        for _ in part_ids:
            item = next(items)
            if item.pixels is None:
                skipped[item.reason] = skipped.get(item.reason, 0) + 1
                skipped_items.append([item.id, item.reason, item.origin])
            else:
                good.append(item)
                if len(good) % cfg.batch_size == 0:
                    rows.append(_embed_batch(trunk, [g.pixels for g in good[-cfg.batch_size:]], cfg.layer, device))
            if bar is not None:
                bar.update(1)
        tail = len(good) % cfg.batch_size
        if tail:
            rows.append(_embed_batch(trunk, [g.pixels for g in good[-tail:]], cfg.layer, device))
        emb = np.concatenate(rows) if rows else np.zeros((0, dim), dtype=np.float16)
        thumbs = np.stack([thumbnail(g.pixels) for g in good if g.pixels is not None]) if good else \
            np.zeros((0, THUMB_SIDE * THUMB_SIDE), dtype=np.float16)
        meta = {"part": k, "start": part_ids[0], "stop": part_ids[-1] + 1, "ids": [g.id for g in good],
                "paths": [g.origin for g in good], "sha1": [g.sha1 for g in good],
                "sizes": [list(g.size) for g in good],
                "skipped": skipped, "skipped_items": skipped_items, "seconds": time.perf_counter() - t0, "rank": rank}
        _commit_part(root, k, {"embeddings": emb, "thumbs": thumbs}, meta)
        result.parts_computed.append(k)
        result.embedded += len(good)
        rate = result.embedded / max(time.perf_counter() - start, 1e-9)
        if bar is not None:
            bar.set_postfix_str(f"{rate:.1f} img/s")
        log.info("embed: %s committed on rank %d (%d rows, %s; %.1f images/s)", part_name(k), rank, len(good),
                 format_skipped(skipped), rate)
    if bar is not None:
        bar.close()
    result.seconds = time.perf_counter() - start
    _barrier()
    result.skipped = _skipped_totals(root, total_parts)
    if rank == 0:
        write_report(root, manifest, result, world)
    return result


def _skipped_totals(root: Path, total_parts: int) -> dict[str, int]:
    totals: dict[str, int] = {}
    for k in sorted(committed_parts(root)):
        if k < total_parts:
            meta = json.loads((root / PARTS / part_name(k) / SAMPLES_FILE).read_text())
            for reason, count in meta["skipped"].items():
                totals[reason] = totals.get(reason, 0) + int(count)
    known = {r: totals[r] for r in SKIP_REASONS if r in totals}
    return known | {r: c for r, c in totals.items() if r not in SKIP_REASONS}


def write_report(root: Path, manifest: dict[str, Any], result: EmbedResult, world: int) -> None:
    """``report.json`` and ``report.md`` of an embed run (totals over all committed parts)."""
    done = committed_parts(root)
    rows = 0
    for k in done:
        rows += len(json.loads((root / PARTS / part_name(k) / SAMPLES_FILE).read_text())["ids"])
    report = {"source": manifest["source_description"], "samples": manifest["samples"], "embedded": rows,
              "skipped": result.skipped, "parts": result.parts, "parts_committed_before": result.parts_before,
              "parts_committed": len(done), "ranks": world, "seconds_rank0": round(result.seconds, 3),
              "images_per_s_rank0": round(result.images_per_s, 2), "dim": manifest["dim"],
              "weights": manifest["weights"]}
    write_text_atomic(root / "report.json", json.dumps(report, indent=1) + "\n")
    lines = ["# embed report", "", f"- source: {report['source']}", f"- weights: {report['weights']}",
             f"- embedded: {rows} of {report['samples']} ({format_skipped(result.skipped)})",
             f"- parts: {len(done)} of {result.parts} committed ({result.parts_before} before this run)",
             f"- rank 0: {result.embedded} images in {result.seconds:.1f} s ({result.images_per_s:.1f} images/s), "
             f"{world} rank(s)", f"- dim: {manifest['dim']} float16, L2-normalised, layer {manifest['layer']}"]
    write_text_atomic(root / "report.md", "\n".join(lines) + "\n")
