"""``bigseer dedup``: exact duplicates by content hash, near duplicates by cosine similarity, one kept per group.

Exact: rows whose encoded bytes have the same sha1 (recorded by ``bigseer embed``). Near: pairs of
L2-normalised embeddings with cosine similarity >= ``threshold``, found with faiss on an exact inner-product
index (``IndexFlatIP``), queried in blocks so memory is the index plus one block of results: ``range``
(``range_search``, every pair; CPU) or ``knn`` (the ``k`` nearest per row, then the threshold; what GPU
indexes support, used when faiss sees a GPU); then verified: the pair's thumbnails (16x16 grey, zero-mean,
:func:`bigseer.curate.items.thumbnail`) must correlate >= ``verify``. A trunk trained for invariance maps
distinct images of one concept close together; the thumbnail check keeps only pairs that also share their
layout (``verify=-1`` turns it off). Byte copies form one group each; near pairs are not chained
(:func:`assign_duplicates`): images are visited largest first (width x height, ties to the smallest catalog
id) and one is removed only when it is a verified near pair of an image already kept, so each removed image
is listed in ``groups.jsonl`` with the kept image it duplicates (nothing is dropped silently).

Defaults :data:`DEFAULT_THRESHOLD` and :data:`DEFAULT_VERIFY`: measured on planted duplicates (half size,
JPEG q=60, 90% centre crops) in ``benchmarks/results/curate.md``.
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

DEFAULT_THRESHOLD = 0.8
DEFAULT_VERIFY = 0.8
KEEP_FILE = "keep.npy"
GROUPS_FILE = "groups.jsonl"
LIST_FILE = "list.txt"


@dataclass
class DedupConfig:
    """Where the embeddings are, where the result goes, and how near is a duplicate."""

    embeddings: str
    out: str
    threshold: float = DEFAULT_THRESHOLD
    verify: float = DEFAULT_VERIFY
    method: str = "auto"
    knn: int = 32
    block: int = 4096
    examples: int = 8

    def validate(self) -> None:
        for name in ("threshold", "verify"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"dedup: --{name} {getattr(self, name)} must be a cosine similarity in [-1, 1]")
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


def verified(thumbs: Any, a: np.ndarray, b: np.ndarray, verify: float, chunk: int = 65536) -> np.ndarray:
    """Mask of the pairs ``(a, b)`` whose thumbnails correlate >= ``verify``."""
    keep = np.ones(len(a), dtype=bool)
    if verify <= -1.0:
        return keep
    for lo in range(0, len(a), chunk):
        ta = thumbs.take(a[lo:lo + chunk]).astype(np.float32)
        tb = thumbs.take(b[lo:lo + chunk]).astype(np.float32)
        keep[lo:lo + chunk] = (ta * tb).sum(1) >= verify - 1e-3
    return keep


def priority(sizes: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows in keeping order: most pixels first, then the smallest catalog id."""
    return np.lexsort((ids, -(sizes[:, 0] * sizes[:, 1])))


def assign_duplicates(n: int, order: np.ndarray, exact_a: np.ndarray, exact_b: np.ndarray, near_a: np.ndarray,
                      near_b: np.ndarray) -> np.ndarray:
    """``keeper[r]``: the kept row that row ``r`` duplicates (``r`` itself when kept).

    Byte copies are one group each (union-find: equality is transitive). Near pairs are not chained: rows
    are visited in ``order`` and a row is removed only when it is a near pair of a row already kept (the
    first such in ``order``), so every removed image is within the thresholds of the image kept for it,
    and a chain of look-alikes (a ~ b ~ c, a !~ c) keeps a and c.
    """
    uf = UnionFind(n)
    uf.union_pairs(exact_a, exact_b)
    label = uf.labels()
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    head = np.full(n, -1, dtype=np.int64)  # per exact group: its first row in order
    for r in order.tolist():
        if head[label[r]] < 0:
            head[label[r]] = r
    group_head = head[label]
    a, b = group_head[near_a], group_head[near_b]
    sel = a != b
    src = np.concatenate([a[sel], b[sel]])
    dst = np.concatenate([b[sel], a[sel]])
    by_src = np.argsort(src, kind="stable")
    src, dst = src[by_src], dst[by_src]
    starts = np.searchsorted(src, np.arange(n + 1))
    keeper = np.full(n, -1, dtype=np.int64)
    for r in order.tolist():
        if group_head[r] != r:
            continue  # byte copies follow their group's head below
        nbrs = dst[starts[r]:starts[r + 1]]
        kept = nbrs[keeper[nbrs] == nbrs] if len(nbrs) else nbrs
        keeper[r] = int(kept[np.argmin(rank[kept])]) if len(kept) else r
    return keeper[group_head]


def find_duplicates(store: EmbeddingStore, cfg: DedupConfig) -> DedupResult:
    """Exact + near duplicate groups of ``store`` and the ids to keep (no files written)."""
    cfg.validate()
    t0 = time.perf_counter()
    ea, eb = exact_pairs(store.sha1)
    na, nb, saturated, method = near_pairs(store.rows(), cfg.threshold, cfg.method, cfg.knn, cfg.block)
    candidates = len(na)
    ok = verified(store.rows("thumbs"), na, nb, cfg.verify)
    na, nb = na[ok], nb[ok]
    order = priority(store.sizes, store.ids)
    keeper = assign_duplicates(store.n, order, ea, eb, na, nb)
    removed = keeper != np.arange(store.n)
    groups, kinds = [], []
    removed_exact = removed_near = 0
    for g in groups_of(keeper):
        rep = int(keeper[g[0]])
        g = np.concatenate([[rep], np.sort(g[g != rep])])
        distinct = len(np.unique(store.sha1[g]))
        groups.append(g)
        kinds.append("exact" if distinct == 1 else "near")
        removed_exact += len(g) - distinct  # byte copies of a member that stays or of another copy
        removed_near += distinct - 1
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
                     "verify": cfg.verify, "method": method, "candidate_pairs": candidates,
                     "near_pairs": int(len(na)), "exact_pairs": int(len(ea)),
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
             f"{r['removed_near_copies']} near copies (cosine >= {r['threshold']}, {r['method']}; thumbnail "
             f"correlation >= {r['verify']}: {r['near_pairs']} of {r['candidate_pairs']} candidate pairs)",
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
