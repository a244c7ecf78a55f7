"""An independent k-NN reference for ``bigseer eval --mode knn`` runs on small image folders.

Two checks, each independent of bigseer.downstream's extraction and k-NN code:

- :func:`reference_features`: the pooled trunk features of every image of a split (files read with PIL, class
  folders sorted), computed by a plain forward in fp32 and in float64, so that the features the run handed to
  ``knn_predict`` (captured by :func:`capture_knn_inputs`) are checked with tests/numerics.py;
- :func:`reference_topk_correct`: the textbook weighted k-NN (cosine similarity, ``exp(sim / T)`` votes) in
  float64 on those captured features, and the number of validation images whose label is the top class / among
  the top 5. The counts are exact claims only where no decision is closer than the run's fp32 rounding could
  move it, so the margins are asserted: the k-th / (k+1)-th neighbour similarities differ by more than twice the
  fp32 error of a cosine of unit vectors of dimension ``d`` (``(d + 4) u``, Higham's bound for a ``d``-term dot
  product plus the normalisation, ``u = 2^-24``), and the label's votes differ from the 1st / 5th other class by
  more than the relative error of a sum of ``k`` such exponentials (``(d + 4) u / T + k u``), twice over.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from PIL import Image

from bigseer.downstream.labeled_data import eval_transform

U32 = 2.0 ** -24


def split_tensors(data: str, split: str, resize: int, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [N, 3, crop, crop] fp32, labels [N])`` of ``data/split``, classes and files in sorted order."""
    tf = eval_transform(resize, crop)
    xs, ys = [], []
    for label, cls in enumerate(sorted(os.listdir(os.path.join(data, split)))):
        for name in sorted(os.listdir(os.path.join(data, split, cls))):
            with Image.open(os.path.join(data, split, cls, name)) as img:
                xs.append(tf(img.convert("RGB")))
            ys.append(label)
    return torch.stack(xs), torch.tensor(ys)


@torch.no_grad()
def reference_features(trunk: torch.nn.Module, x: torch.Tensor, layer: str,
                       batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Global-average-pooled ``layer`` features of ``x`` by a plain eval-mode forward: (fp32, float64)."""
    out = []
    for dtype in (torch.float32, torch.float64):
        net = copy.deepcopy(trunk).to(dtype).eval()
        feats = []
        for i in range(0, len(x), batch):
            xb = x[i:i + batch].to(dtype)
            feats.append(net(xb) if layer == "res5" else net.forward_features(xb)[layer].mean((2, 3)))
        out.append(torch.cat(feats))
    return out[0], out[1]


def assert_knn_saw_trunk_features(seen: dict[str, torch.Tensor], trunk: torch.nn.Module, data: str, size: int,
                                  layer: str, what: str = "") -> torch.Tensor:
    """The k-NN of a run got ``trunk``'s ``layer`` features of both splits (within the fp32 rounding of a float64
    forward) and the train labels of the folder; returns the validation labels."""
    from tests.numerics import assert_within_fp32_error

    y = torch.empty(0)
    for split in ("train", "val"):
        x, y = split_tensors(data, split, size, size)
        f32, f64 = reference_features(trunk, x, layer)
        assert_within_fp32_error(seen[f"{split}_f"], f32, f64, f"{what}{split} features")
        if split == "train":
            assert torch.equal(seen["train_y"], y)
    return y


def capture_knn_inputs(monkeypatch: Any) -> dict[str, torch.Tensor]:
    """Record the features and labels the run passes to ``knn_predict`` (which still runs unchanged)."""
    import bigseer.downstream.train as train

    seen: dict[str, torch.Tensor] = {}
    real = train.knn_predict

    def spy(train_f, train_y, val_f, *args, **kwargs):
        seen.update(train_f=train_f.clone(), train_y=train_y.clone(), val_f=val_f.clone())
        return real(train_f, train_y, val_f, *args, **kwargs)

    monkeypatch.setattr(train, "knn_predict", spy)
    return seen


def reference_topk_correct(train_f: torch.Tensor, train_y: torch.Tensor, val_f: torch.Tensor, val_y: torch.Tensor,
                           num_classes: int, k: int, temperature: float) -> tuple[int, int]:
    """(top-1 correct, top-5 correct) of the weighted k-NN, float64, one image at a time; asserts the margins of
    the module docstring so that the run's fp32 arithmetic must reach the same counts."""
    train_n = torch.nn.functional.normalize(train_f.double(), dim=1)
    val_n = torch.nn.functional.normalize(val_f.double(), dim=1)
    k = min(k, len(train_n))
    d = train_n.shape[1]
    sim_err = (d + 4) * U32
    vote_err = sim_err / temperature + k * U32
    top1 = top5 = 0
    for q, label in zip(val_n, val_y.tolist()):
        sims, order = (train_n @ q).sort(descending=True)
        if k < len(sims):
            assert sims[k - 1] - sims[k] > 2 * sim_err, ("k-th neighbour within rounding", float(sims[k - 1] - sims[k]))
        votes = torch.zeros(num_classes, dtype=torch.float64)
        for s, j in zip(sims[:k], order[:k].tolist()):
            votes[train_y[j]] += torch.exp(s / temperature)
        others = torch.cat([votes[:label], votes[label + 1:]]).sort(descending=True).values
        for rank in (0, 4):
            if rank < len(others):
                gap = abs(float(votes[label] - others[rank])) / float(votes.max())
                assert gap > 2 * vote_err, ("class ranking within rounding", rank, gap)
        top1 += bool(votes[label] > others[0])
        top5 += bool(len(others) < 5 or votes[label] > others[4])
    return top1, top5
