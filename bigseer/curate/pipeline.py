"""``bigseer curate``: embeddings (optionally deduplicated) -> hierarchical k-means -> balanced sample -> the list
``bigseer pretrain --data`` reads; or, from a raw pile, embed -> dedup -> curate in one call.

Outputs in ``out``: ``list.txt`` (or ``shards/index.json`` for tar members), ``selected.npy`` (catalog ids),
``clusters.npz`` (kept ids and their level-1 cluster), ``report.json`` / ``report.md``,
``cluster_sizes.png`` (level-1 cluster sizes before vs after) and ``clusters.png`` (examples of the largest and
smallest clusters). Only rank 0 writes; every rank computes the same selection.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bigseer.atomic import write_text_atomic, write_with
from bigseer.curate.dedup import DedupConfig, find_duplicates, read_keep, write_dedup
from bigseer.curate.hierarchy import auto_levels, hierarchical_kmeans
from bigseer.curate.output import write_selection
from bigseer.curate.report import cluster_sizes_png, embed_png, image_grid
from bigseer.curate.rows import TakeRows
from bigseer.curate.sampling import balanced_sample
from bigseer.curate.store import EmbeddingStore
from bigseer.distributed import get_rank, is_distributed
from bigseer.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class CurateConfig:
    """Selection settings (``target`` wins over ``fraction``; ``levels`` None: :func:`auto_levels`)."""

    embeddings: str
    out: str
    keep: str | None = None
    target: int | None = None
    fraction: float = 0.5
    levels: list[int] | None = None
    seed: int = 0
    niter: int = 20
    resample_steps: int = 1
    resample_size: int | None = None
    kmeans: str = "auto"
    drop_clusters: list[int] = field(default_factory=list)
    examples: int = 4

    def validate(self) -> None:
        if self.target is not None and self.target < 1:
            raise ConfigError(f"curate: --target {self.target} must be >= 1")
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"curate: --fraction {self.fraction} must be in (0, 1]")
        if self.niter < 1 or self.resample_steps < 0:
            raise ConfigError("curate: --niter must be >= 1 and --resample_steps >= 0")


@dataclass
class CurateResult:
    """What ``--data`` takes, the selected catalog ids and the report."""

    data: Path | None
    selected: np.ndarray
    report: dict[str, Any]


def _barrier() -> None:
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()


def curate_embeddings(cfg: CurateConfig) -> CurateResult:
    """Cluster the (kept) embeddings and write the balanced selection; see the module docstring."""
    cfg.validate()
    t0 = time.perf_counter()
    store = EmbeddingStore(cfg.embeddings)
    kept_rows = np.arange(store.n) if cfg.keep is None else store.row_of_id(read_keep(cfg.keep, store))
    rows = TakeRows(store.rows(), kept_rows)
    ks = list(cfg.levels) if cfg.levels else auto_levels(rows.n)
    bad = [c for c in cfg.drop_clusters if not 0 <= c < ks[0]]
    if bad:
        raise ConfigError(f"curate: --drop_clusters {bad} are not level-1 clusters (0..{ks[0] - 1})")
    levels = hierarchical_kmeans(rows, ks, seed=cfg.seed, niter=cfg.niter, resample_steps=cfg.resample_steps,
                                 resample_size=cfg.resample_size, backend=cfg.kmeans)
    allowed = ~np.isin(levels[0].labels, np.asarray(cfg.drop_clusters, dtype=np.int64))
    target = cfg.target if cfg.target is not None else max(1, round(cfg.fraction * rows.n))
    available = int(allowed.sum())
    if target > available:
        log.warning("curate: target %d is more than the %d images available; selecting all of them", target, available)
    picked = balanced_sample(levels, allowed, min(target, available), cfg.seed)
    selected_rows = kept_rows[picked]
    selected = store.ids[selected_rows]
    before = np.bincount(levels[0].labels, minlength=ks[0])
    after = np.bincount(levels[0].labels[picked], minlength=ks[0])
    report = {"embeddings": str(Path(store.root).resolve()), "source": store.manifest["source"],
              "rows": store.n, "after_dedup": int(rows.n), "dropped_by_clusters": int(rows.n - available),
              "target": int(target), "selected": int(len(selected)), "levels": ks, "seed": cfg.seed,
              "kmeans": cfg.kmeans, "resample_steps": cfg.resample_steps, "drop_clusters": list(cfg.drop_clusters),
              "level1_sizes_before": _stats(before), "level1_sizes_after": _stats(after),
              "seconds": 0.0}
    data = None
    if get_rank() == 0:
        data = _write_outputs(cfg, store, rows, kept_rows, levels, picked, selected, before, after, report, t0)
    _barrier()
    return CurateResult(data, selected, report)


def _stats(sizes: np.ndarray) -> dict[str, float]:
    """Balance of a cluster-size vector: normalised entropy (1 = uniform), max / median, clusters used."""
    nz = sizes[sizes > 0]
    p = nz / max(1, nz.sum())
    entropy = float(-(p * np.log(p)).sum() / np.log(len(sizes))) if len(sizes) > 1 else 1.0
    return {"images": int(sizes.sum()), "clusters_used": int(len(nz)), "max": int(sizes.max(initial=0)),
            "median": float(np.median(nz)) if len(nz) else 0.0, "min_nonzero": int(nz.min(initial=0)),
            "entropy_ratio": round(entropy, 4)}


def _write_outputs(cfg: CurateConfig, store: EmbeddingStore, rows: TakeRows, kept_rows: np.ndarray, levels: list,
                   picked: np.ndarray, selected: np.ndarray, before: np.ndarray, after: np.ndarray,
                   report: dict[str, Any], t0: float) -> Path:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    origins = [store.paths[int(r)] for r in kept_rows[picked]]
    data = write_selection(out, selected.tolist(), origins)
    write_with(out / "selected.npy", lambda tmp: np.save(open(tmp, "wb"), selected))
    write_with(out / "clusters.npz", lambda tmp: np.savez(open(tmp, "wb"), ids=store.ids[kept_rows],
                                                          level1=levels[0].labels))
    cluster_sizes_png(out / "cluster_sizes.png", before, after)
    examples = _cluster_examples(store, kept_rows, levels[0], before, cfg.examples)
    image_grid(out / "clusters.png", store.manifest["source"],
               [(f"cluster {c} ({before[c]} -> {after[c]}), {which}", paths) for c, which, paths in examples])
    report["data"] = str(data.resolve())
    report["examples"] = [{"cluster": int(c), "kind": which, "size_before": int(before[c]), "size_after": int(after[c]),
                           "paths": paths[:4]} for c, which, paths in examples]
    report["seconds"] = round(time.perf_counter() - t0, 3)
    write_text_atomic(out / "report.json", json.dumps(report, indent=1) + "\n")
    write_text_atomic(out / "report.md", _markdown(report))
    return data


def _cluster_examples(store: EmbeddingStore, kept_rows: np.ndarray, level: Any, sizes: np.ndarray,
                      count: int) -> list[tuple[int, str, list[str]]]:
    """The ``count`` largest and smallest non-empty level-1 clusters, each with its rows nearest the centroid."""
    nonempty = np.nonzero(sizes)[0]
    order = nonempty[np.lexsort((nonempty, -sizes[nonempty]))]
    picks = [(int(c), "largest") for c in order[:count]]
    picks += [(int(c), "smallest") for c in order[::-1][:count] if int(c) not in {p for p, _ in picks}]
    out = []
    for c, which in picks:
        members = np.nonzero(level.labels == c)[0]
        members = members[np.argsort(level.dist[members], kind="stable")][:8]
        out.append((c, which, [store.paths[int(kept_rows[m])] for m in members]))
    return out


def _markdown(r: dict[str, Any]) -> str:
    b, a = r["level1_sizes_before"], r["level1_sizes_after"]
    lines = ["# curate report", "", f"- embeddings: {r['embeddings']}",
             f"- images: {r['rows']} embedded, {r['after_dedup']} after dedup, {r['dropped_by_clusters']} in dropped "
             f"clusters {r['drop_clusters']}", f"- selected {r['selected']} (target {r['target']}), seed {r['seed']}",
             f"- levels (k per level): {r['levels']}, k-means {r['kmeans']}, resampling steps {r['resample_steps']}",
             "", "| level-1 clusters | images | used | max | median | entropy / log k |", "|---|---|---|---|---|---|",
             f"| before | {b['images']} | {b['clusters_used']} | {b['max']} | {b['median']:g} | {b['entropy_ratio']} |",
             f"| after | {a['images']} | {a['clusters_used']} | {a['max']} | {a['median']:g} | {a['entropy_ratio']} |",
             "", f"`bigseer pretrain --data {r['data']}`", "",
             "## largest and smallest clusters (`--drop_clusters` ids)", ""]
    for e in r["examples"]:
        lines.append(f"- cluster {e['cluster']} ({e['kind']}, {e['size_before']} -> {e['size_after']}): "
                     + ", ".join(f"`{p}`" for p in e["paths"]))
    return "\n".join(lines) + "\n"


def curate_pile(source: str, weights: str, out: str, *, embed_kwargs: dict[str, Any] | None = None,
                threshold: float | None = None, verify: float | None = None,
                curate_kwargs: dict[str, Any] | None = None) -> CurateResult:
    """embed -> dedup -> curate for a small pile: ``out/embeddings`` (+ ``embed.png``: image sizes, skips by
    reason), ``out/dedup`` and the selection in ``out``, each with its report."""
    from bigseer.curate.embed import EmbedConfig, embed_source

    root = Path(out)
    embed_source(EmbedConfig(source=source, weights=weights, out=str(root / "embeddings"), **(embed_kwargs or {})))
    if get_rank() == 0:
        store = EmbeddingStore(root / "embeddings")
        embed_png(root / "embeddings" / "embed.png", store.sizes, store.skipped)
        dcfg = DedupConfig(str(root / "embeddings"), str(root / "dedup"))
        if threshold is not None:
            dcfg.threshold = threshold
        if verify is not None:
            dcfg.verify = verify
        write_dedup(store, find_duplicates(store, dcfg), root / "dedup")
    _barrier()
    return curate_embeddings(CurateConfig(str(root / "embeddings"), str(root), keep=str(root / "dedup"),
                                          **(curate_kwargs or {})))


def is_embeddings_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "manifest.json"))
