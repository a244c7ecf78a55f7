"""Weighted kNN on frozen features."""

import torch

from bigseer.downstream.config import EvalConfig
from bigseer.downstream.knn import knn_predict
from bigseer.downstream.synthetic import write_colour_folder
from bigseer.downstream.train import run_downstream
from bigseer.downstream.weights import load_trunk
from tests.downstream.knn_reference import (assert_knn_saw_trunk_features, capture_knn_inputs,
                                           reference_topk_correct)


def test_knn_predict_separates_clusters_and_weights_by_similarity():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3) * 5
    train_y = torch.arange(3).repeat_interleave(10)
    train = centres[train_y] + 0.3 * torch.randn(30, 3, generator=g)
    test_y = torch.tensor([2, 0, 1, 1])
    test = centres[test_y] + 0.3 * torch.randn(4, 3, generator=g)
    scores = knn_predict(train, train_y, test, num_classes=3, k=5)
    assert torch.equal(scores.argmax(1), test_y)
    # k larger than the training set is capped; one near neighbour outvotes far ones at low temperature
    near = knn_predict(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]]), torch.tensor([0, 1, 1]),
                       torch.tensor([[1.0, 0.05]]), num_classes=2, k=50, temperature=0.01)
    assert near.argmax(1).item() == 0


def test_knn_mode_top1_top5_equal_a_float64_reference(tmp_path, monkeypatch):
    """10 classes (top-5 is not all of them), k = 20: the features the run hands to ``knn_predict`` are the
    trunk's pooled res4 features of the images in folder order (within fp32 rounding of a plain float64 forward,
    tests/numerics.py), and top-1 / top-5 are exactly those of a textbook float64 k-NN on those features (every
    decision's margin checked against fp32 rounding: tests/downstream/knn_reference.py). Seen: 70.0 / 96.67."""
    data = write_colour_folder(str(tmp_path / "data"), num_classes=10, train_per_class=6, val_per_class=3, size=24)
    cfg = EvalConfig(mode="knn", data=data, model="regnety_test", batch_size=8, knn_k=20, eval_resize=24,
                     eval_crop=24, layer="res4", output_dir=str(tmp_path / "out"), cpu=True, progress=False)
    seen = capture_knn_inputs(monkeypatch)
    res = run_downstream(cfg)
    trunk = load_trunk(None, "regnety_test", seed=cfg.seed)
    y = assert_knn_saw_trunk_features(seen, trunk, data, 24, "res4")
    c1, c5 = reference_topk_correct(seen["train_f"], seen["train_y"], seen["val_f"], y, 10, k=20,
                                    temperature=cfg.knn_temperature)
    final = res["final"]
    assert (final["top1"], final["top5"]) == (100.0 * c1 / 30, 100.0 * c5 / 30)
    assert 0 < c1 < c5 < 30  # neither count is trivially all or nothing
    assert res["num_val_images"] == 30 and (tmp_path / "out" / "results.json").exists()
