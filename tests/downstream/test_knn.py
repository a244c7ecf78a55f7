"""Weighted kNN on frozen features."""

import torch

from bigseer.downstream.config import EvalConfig
from bigseer.downstream.knn import knn_predict
from bigseer.downstream.synthetic import write_colour_folder
from bigseer.downstream.train import run_downstream


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


def test_knn_mode_reports_top1_top5(tmp_path):
    data = write_colour_folder(str(tmp_path / "data"), num_classes=3, train_per_class=6, val_per_class=3, size=24)
    cfg = EvalConfig(mode="knn", data=data, model="regnety_test", batch_size=8, knn_k=5, eval_resize=24,
                     eval_crop=24, layer="res4", output_dir=str(tmp_path / "out"), cpu=True, progress=False)
    res = run_downstream(cfg)
    final = res["final"]
    assert 0.0 <= final["top1"] <= 100.0 and final["top5"] == 100.0  # 3 classes: top-5 covers all
    assert res["num_val_images"] == 9 and (tmp_path / "out" / "results.json").exists()
