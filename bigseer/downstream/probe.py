"""Low-shot logistic-regression probes on frozen features: what SEER's low-shot claims measure.

Protocol (``--mode probe``): extract frozen features of every train and val image once (eval transform,
pooled ``layer``, trunk in eval mode; or raw pixels as a baseline), standardise them with the mean and std
of the *whole* training split (labels unused: the statistics an unlabeled pool gives), then for every
labeled budget - ``k`` images per class (k = 1, 2, 5, 10) and a class-balanced fraction of the training
labels (1%, 10%) - draw ``draws`` deterministic subsets, fit scikit-learn's multinomial
``LogisticRegression`` (L2, ``C``, lbfgs) on the subset and report val top-1 (%) mean and std over draws.

k-shot subsets are class-balanced and seeded: draw ``d`` of class ``c`` takes the first ``k`` images of a
permutation seeded by ``(seed, d, c)``; fraction subsets are :func:`bigseer.downstream.lowshot.balanced_subset`
with seed ``seed * 1000 + d``. The same seed gives the same subsets for every trunk compared.

Entry points: :func:`run_probe` (an :class:`EvalConfig` with ``mode="probe"``; ``examples/finetune.py
--mode probe`` and ``run_downstream``), :func:`probe_features` (in-memory features), and
:func:`trunk_features` / :func:`pixel_features` for the extraction step.
"""

from __future__ import annotations

import math
import sys
import time
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
import torch

from bigseer.downstream.evaluate import extract_features
from bigseer.downstream.labeled_data import LabeledImages, LabeledSplit, eval_transform, scan_image_folder
from bigseer.downstream.linear import freeze, pooled_features
from bigseer.downstream.lowshot import balanced_subset
from bigseer.errors import ConfigError, DataError

DEFAULT_SHOTS = (1, 2, 5, 10)
DEFAULT_FRACTIONS = (0.01, 0.1)


def kshot_subset(targets: Sequence[int], k: int, seed: int = 0, draw: int = 0,
                 class_names: Sequence[str] | None = None) -> list[int]:
    """Sorted indices of ``k`` images per class (deterministic in ``seed`` and ``draw``).

    Raises ConfigError for ``k < 1`` and DataError when a class has fewer than ``k`` images."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"shots: k={k!r} must be an integer >= 1 images per class")
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(targets):
        by_class[int(t)].append(i)
    chosen: list[int] = []
    for c in sorted(by_class):
        idx = by_class[c]
        if len(idx) < k:
            name = class_names[c] if class_names is not None else str(c)
            raise DataError(f"{k}-shot probe: class {name!r} has only {len(idx)} training image(s)")
        g = torch.Generator().manual_seed((seed * 1_000_003 + draw) * 10_007 + c)
        chosen.extend(idx[j] for j in torch.randperm(len(idx), generator=g)[:k].tolist())
    return sorted(chosen)


def standardize(reference: np.ndarray, *arrays: np.ndarray) -> list[np.ndarray]:
    """``(x - mean) / std`` with the per-dimension statistics of ``reference`` (constant dims: std 1)."""
    mean = reference.mean(axis=0)
    std = reference.std(axis=0)
    std = np.where(std > 1e-12 * max(float(np.abs(reference).max()), 1e-30), std, 1.0)
    return [(a - mean) / std for a in (reference, *arrays)]


def logistic_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                      c: float = 1.0, max_iter: int = 1000) -> float:
    """Top-1 (%) on ``(x_test, y_test)`` of scikit-learn's L2 multinomial LogisticRegression (lbfgs)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y_train)) < 2:
        raise DataError("logistic probe needs labeled images of at least 2 classes")
    clf = LogisticRegression(C=c, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, y_train)
    return 100.0 * float((clf.predict(x_test) == y_test).mean())


def budgets(shots: Sequence[int], fractions: Sequence[float]) -> list[tuple[str, str, float]]:
    """``(name, kind, value)`` per labeled budget, e.g. ``("1-shot", "shot", 1)``, ``("1%", "fraction", 0.01)``."""
    out = [(f"{int(k)}-shot", "shot", k) for k in shots]
    out += [(f"{100 * f:g}%", "fraction", f) for f in fractions]
    return out


def probe_features(train_f: torch.Tensor | np.ndarray, train_y: Sequence[int], val_f: torch.Tensor | np.ndarray,
                   val_y: Sequence[int], shots: Sequence[int] = DEFAULT_SHOTS,
                   fractions: Sequence[float] = DEFAULT_FRACTIONS, draws: int = 5, seed: int = 0,
                   c: float = 1.0, class_names: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Low-shot logistic probes on frozen features; ``{budget: {"mean", "std", "top1": [...], "labeled"}}``.

    ``std`` is the sample standard deviation over the ``draws`` subsets (0 for one draw)."""
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ConfigError(f"draws={draws!r} must be an integer >= 1")
    if not c > 0:
        raise ConfigError(f"probe_c={c!r} must be > 0")
    tr = np.asarray(train_f, dtype=np.float64).reshape(len(train_y), -1)
    va = np.asarray(val_f, dtype=np.float64).reshape(len(val_y), -1)
    ytr, yva = np.asarray(train_y), np.asarray(val_y)
    tr, va = standardize(tr, va)
    results: dict[str, dict[str, Any]] = {}
    for name, kind, value in budgets(shots, fractions):
        accs, labeled = [], 0
        for d in range(draws):
            if kind == "shot":
                idx = kshot_subset(ytr.tolist(), int(value), seed=seed, draw=d, class_names=class_names)
            else:
                idx = balanced_subset(ytr.tolist(), float(value), seed=seed * 1000 + d, class_names=class_names)
            labeled = len(idx)
            accs.append(logistic_accuracy(tr[idx], ytr[idx], va, yva, c))
        results[name] = {"mean": float(np.mean(accs)), "std": float(np.std(accs, ddof=1)) if draws > 1 else 0.0,
                         "top1": accs, "labeled": labeled}
    return results


def trunk_features(trunk: torch.nn.Module, split: LabeledSplit, layer: str, resize: int, crop: int,
                   batch_size: int = 256, num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen pooled ``layer`` features ``[N, C]`` and labels of ``split`` (eval transform; sharded over ranks)."""
    freeze(trunk)
    device = next(trunk.parameters()).device

    def fn(x: torch.Tensor) -> torch.Tensor:
        return pooled_features(trunk, x.to(device), layer).cpu()

    return extract_features(fn, LabeledImages(split, eval_transform(resize, crop)), batch_size, num_workers)


def pixel_features(split: LabeledSplit, resize: int, crop: int, batch_size: int = 256,
                   num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw-pixel baseline: flattened eval-transformed images ``[N, 3 * crop * crop]`` and labels."""
    return extract_features(lambda x: x.flatten(1), LabeledImages(split, eval_transform(resize, crop)),
                            batch_size, num_workers)


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """One line: ``1-shot 65.4±2.1  2-shot ...``."""
    return "  ".join(f"{name} {r['mean']:.1f}±{r['std']:.1f}" for name, r in results.items())


def run_probe(cfg: Any) -> dict[str, Any]:
    """``--mode probe`` of a resolved :class:`bigseer.downstream.config.EvalConfig`; returns the results dict.

    Features come from ``cfg.weights`` / ``cfg.model`` (random init) at ``cfg.layer``, or raw pixels with
    ``cfg.features == "pixels"``. Extraction is sharded over the launched processes; every process then
    fits the same probes (deterministic) and returns the same numbers."""
    from bigseer.downstream.weights import fast_trunk, load_trunk

    start = time.time()
    train, val = scan_image_folder(cfg.data)
    trunk = None if cfg.features == "pixels" else fast_trunk(load_trunk(cfg.weights, cfg.model, seed=cfg.seed),
                                                             cfg.channels_last, cfg.compile, cfg.cpu)

    def extract(split: LabeledSplit) -> tuple[torch.Tensor, torch.Tensor]:
        if trunk is None:
            return pixel_features(split, cfg.eval_resize, cfg.eval_crop, cfg.batch_size, cfg.num_workers)
        return trunk_features(trunk, split, cfg.layer, cfg.eval_resize, cfg.eval_crop, cfg.batch_size,
                              cfg.num_workers)

    train_f, train_y = extract(train)
    val_f, val_y = extract(val)
    res = probe_features(train_f, train_y.tolist(), val_f, val_y.tolist(), cfg.shots, cfg.fractions, cfg.draws,
                         cfg.seed, cfg.probe_c, class_names=train.classes)
    final = {name: r["mean"] for name, r in res.items()}
    final["time_s"] = round(time.time() - start, 2)
    if cfg.progress:
        print(f"probe ({cfg.features}{'' if cfg.features == 'pixels' else ' ' + cfg.layer}, "
              f"{cfg.draws} draws): {format_table(res)}", file=sys.stderr, flush=True)
    return {"probe": res, "final": final, "feature_dim": int(train_f.shape[1]), "features": cfg.features,
            "num_train_images": len(train), "num_val_images": len(val), "classes": train.classes,
            "history": [], "epochs": 0, "best_top1": max((r["mean"] for r in res.values()), default=math.nan)}
