"""``bigseer dedup``: exact duplicates by content hash, near duplicates by cosine similarity, one kept per group.

Exact: rows whose encoded bytes have the same sha1 (recorded by ``bigseer embed``). Near: pairs of
L2-normalised embeddings with cosine similarity >= ``threshold``, found with faiss on an exact inner-product
index (``IndexFlatIP``), queried in blocks so memory is the index plus one block of results: ``range``
(``range_search``, every pair; CPU) or ``knn`` (the ``k`` nearest per row, then the threshold; what GPU
indexes support, used when faiss sees a GPU). Pairs are merged with union-find into groups; each group keeps
its largest image (width x height), ties to the smallest catalog id; everything else is removed and listed
in ``groups.jsonl`` with its paths (nothing is dropped silently).

Default threshold: :data:`DEFAULT_THRESHOLD`, chosen from planted duplicates (resized, JPEG q=60, 90%
centre crops) in ``benchmarks/results/curate.md``.
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
from bigseer.curate import import_faiss
from bigseer.curate.groups import UnionFind, groups_of
from bigseer.curate.rows import iter_blocks
from bigseer.curate.store import EmbeddingStore
from bigseer.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.95
KEEP_FILE = "keep.npy"
GROUPS_FILE = "groups.jsonl"
LIST_FILE = "list.txt"


@dataclass
class DedupConfig:
    """Where the embeddings are, where the result goes, and how near is a duplicate."""

    embeddings: str
    out: str
    threshold: float = DEFAULT_THRESHOLD
    method: str = "auto"
    knn: int = 32
    block: int = 4096
    examples: int = 8

    def validate(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise ConfigError(f"dedup: --threshold {self.threshold} must be a cosine similarity in [-1, 1]")
        if self.method not in ("auto", "range", "knn"):
            raise ConfigError(f"dedup: --method {self.method!r} must be auto, range or knn")
        if self.knn < 2 or self.block < 1:
            raise ConfigError("dedup: --knn must be >= 2 and --block >= 1")


@dataclass
class DedupResult:
    """Kept catalog ids, the duplicate groups (row numbers, representative first) and their counts."""

    keep: np.ndarray
    groups: list[np.ndarray]
    kinds: list[str]
    rows: int
    removed_exact: int = 0
    removed_near: int = 0
    saturated: int = 0
    seconds: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)


def exact_pairs(sha1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (consecutive in hash order) with equal content hashes."""
    order = np.argsort(sha1, kind="stable")
    same = np.nonzero(sha1[order][1:] == sha1[order][:-1])[0]
    return order[same], order[same + 1]


def _gpu_index(index: Any) -> Any:
    faiss = import_faiss()

    return faiss.index_cpu_to_all_gpus(index) if hasattr(faiss, "index_cpu_to_all_gpus") else index


def near_pairs(rows: Any, threshold: float, method: str = "auto", k: int = 32,
               block: int = 4096) -> tuple[np.ndarray, np.ndarray, int, str]:
    """Row pairs ``(i, j)``, ``i < j``, with cosine >= ``threshold``; also the number of rows whose ``k``-th
    neighbour still passes (``knn``: their group may be incomplete) and the method used."""
    faiss = import_faiss()

    gpu = faiss.get_num_gpus() > 0 if hasattr(faiss, "get_num_gpus") else False
    method = ("knn" if gpu else "range") if method == "auto" else method
    index = faiss.IndexFlatIP(rows.dim)
    for _, x in iter_blocks(rows, block * 16):
        index.add(x)
    if gpu and method == "knn":
        index = _gpu_index(index)
    a_all, b_all, saturated = [], [], 0
    for start, x in iter_blocks(rows, block):
        q = np.arange(start, start + len(x))
        if method == "range":
            lims, sims, nbrs = index.range_search(x, np.float32(threshold) - np.float32(1e-6))
            a = np.repeat(q, np.diff(lims.astype(np.int64)))
            b = nbrs.astype(np.int64)
        else:
            kk = min(k, rows.n)
            sims, nbrs = index.search(x, kk)
            keep = (sims >= threshold) & (nbrs >= 0)
            saturated += int(keep[:, -1].sum()) if kk < rows.n else 0
            a = np.broadcast_to(q[:, None], nbrs.shape)[keep]
            b = nbrs[keep].astype(np.int64)
        sel = a < b
        a_all.append(a[sel])
        b_all.append(b[sel])
    return _cat(a_all), _cat(b_all), saturated, method


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def representative(rows: np.ndarray, sizes: np.ndarray, ids: np.ndarray) -> int:
    """The row a group keeps: most pixels, then the smallest catalog id."""
    pixels = sizes[rows, 0] * sizes[rows, 1]
    return int(rows[np.lexsort((ids[rows], -pixels))[0]])


def find_duplicates(store: EmbeddingStore, cfg: DedupConfig) -> DedupResult:
    """Exact + near duplicate groups of ``store`` and the ids to keep (no files written)."""
    cfg.validate()
    t0 = time.perf_counter()
    uf = UnionFind(store.n)
    ea, eb = exact_pairs(store.sha1)
    uf.union_pairs(ea, eb)
    na, nb, saturated, method = near_pairs(store.rows(), cfg.threshold, cfg.method, cfg.knn, cfg.block)
    uf.union_pairs(na, nb)
    groups, kinds = [], []
    removed = np.zeros(store.n, dtype=bool)
    removed_exact = removed_near = 0
    for g in groups_of(uf.labels()):
        rep = representative(g, store.sizes, store.ids)
        g = np.concatenate([[rep], np.sort(g[g != rep])])
        exact = bool((store.sha1[g] == store.sha1[rep]).all())
        groups.append(g)
        kinds.append("exact" if exact else "near")
        removed[g[1:]] = True
        same = int((store.sha1[g[1:]] == store.sha1[rep]).sum())
        removed_exact += same
        removed_near += len(g) - 1 - same
    if saturated:
        log.warning("dedup: %d rows have >= %d neighbours above %.3f; their groups may be incomplete "
                    "(raise --knn or use --method range)", saturated, cfg.knn, cfg.threshold)
    result = DedupResult(store.ids[~removed], groups, kinds, store.n, removed_exact, removed_near, saturated)
    result.seconds = time.perf_counter() - t0
    result.report = {"embeddings": str(Path(store.root).resolve()), "source": store.manifest["source"],
                     "rows": store.n, "kept": int(len(result.keep)), "removed": int(removed.sum()),
                     "removed_exact_copies": removed_exact, "removed_near_copies": removed_near,
                     "groups": len(groups), "exact_groups": kinds.count("exact"), "near_groups": kinds.count("near"),
                     "largest_group": max((len(g) for g in groups), default=1), "threshold": cfg.threshold,
                     "method": method, "near_pairs": int(len(na)), "exact_pairs": int(len(ea)),
                     "knn_saturated_rows": saturated, "seconds": round(result.seconds, 3)}
    return result


def write_dedup(store: EmbeddingStore, result: DedupResult, out: str | os.PathLike[str], examples: int = 8) -> Path:
    """``keep.npy`` (kept catalog ids), ``groups.jsonl``, ``list.txt`` (kept files, for path sources),
    ``report.json`` / ``report.md`` / ``groups.png`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_with(out / KEEP_FILE, lambda tmp: np.save(open(tmp, "wb"), result.keep))
    lines = []
    for n, (g, kind) in enumerate(zip(result.groups, result.kinds)):
        lines.append(json.dumps({"group": n, "kind": kind, "keep": int(store.ids[g[0]]),
                                 "ids": [int(v) for v in store.ids[g]], "paths": [store.paths[int(r)] for r in g]}))
    write_text_atomic(out / GROUPS_FILE, "".join(line + "\n" for line in lines))
    kept_rows = store.row_of_id(result.keep)
    paths = [store.paths[int(r)] for r in kept_rows]
    if paths and all(os.path.isabs(p) or os.path.exists(p) for p in paths) and not any("#" in p for p in paths):
        write_text_atomic(out / LIST_FILE, "".join(os.path.abspath(p) + "\n" for p in paths))
        result.report["list"] = str((out / LIST_FILE).resolve())
    write_text_atomic(out / "report.json", json.dumps(result.report, indent=1) + "\n")
    write_text_atomic(out / "report.md", _markdown(store, result, examples))
    from bigseer.curate.report import group_grid

    group_grid(out / "groups.png", store, result.groups[:examples], result.kinds[:examples])
    return out


def _markdown(store: EmbeddingStore, result: DedupResult, examples: int) -> str:
    r = result.report
    lines = ["# dedup report", "", f"- embeddings: {r['embeddings']} ({r['rows']} rows)",
             f"- kept {r['kept']}, removed {r['removed']}: {r['removed_exact_copies']} exact copies (same sha1), "
             f"{r['removed_near_copies']} near copies (cosine >= {r['threshold']}, {r['method']})",
             f"- groups: {r['groups']} ({r['exact_groups']} exact, {r['near_groups']} near), "
             f"largest {r['largest_group']}",
             f"- time: {r['seconds']:.2f} s", "", "## largest groups (first path is kept)", ""]
    for n in sorted(range(len(result.groups)), key=lambda i: -len(result.groups[i]))[:examples]:
        g = result.groups[n]
        shown = ", ".join(f"`{store.paths[int(row)]}`" for row in g[:4])
        more = f" (+{len(g) - 4} more)" if len(g) > 4 else ""
        lines.append(f"- group {n} ({result.kinds[n]}, {len(g)}): {shown}{more}")
    return "\n".join(lines) + "\n"


def read_keep(path: str | os.PathLike[str], store: EmbeddingStore) -> np.ndarray:
    """Kept ids of a dedup output directory, checked against ``store``; DataError when they do not belong."""
    from bigseer.errors import DataError

    path = Path(path)
    try:
        report = json.loads((path / "report.json").read_text())
        keep = np.load(path / KEEP_FILE)
    except FileNotFoundError as exc:
        raise DataError(f"{path} is not a dedup output directory (no {Path(exc.filename).name}; "
                        f"write it with `bigseer dedup EMB --out {path}`)") from None
    if report.get("embeddings") != str(Path(store.root).resolve()):
        raise DataError(f"dedup output {path} was made from embeddings {report.get('embeddings')}, not {store.root}")
    store.row_of_id(keep)  # DataError for an id that is not in the store
    return keep
