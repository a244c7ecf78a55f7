"""Mask R-CNN from exported weights: forward + backward on two 128 px images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import bigseer.downstream
from bigseer.errors import ConfigError
from bigseer.export import export_checkpoint
from tests.export.builders import TinySwAV, randomize, write_torch_checkpoint

pytestmark = pytest.mark.slow  # an end-to-end job: not in the fast tier (-m 'not slow')


def _targets() -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(2):
        masks = torch.zeros(2, 128, 128, dtype=torch.uint8)
        masks[0, 10:60, 20:80] = 1
        masks[1, 70 - i * 5:120, 50:110] = 1
        boxes = torch.tensor([[20.0, 10.0, 80.0, 60.0], [50.0, 70.0 - i * 5, 110.0, 120.0]])
        out.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks})
    return out


@pytest.fixture()
def exported(tmp_path: Path) -> tuple[TinySwAV, Path]:
    model = randomize(TinySwAV("regnety_test"))
    write_torch_checkpoint(tmp_path / "run", model)
    export_checkpoint(tmp_path / "run", tmp_path / "export")
    return model, tmp_path / "export"


def test_maskrcnn_forward_backward_from_exported_weights(exported) -> None:
    from torchvision.ops import FrozenBatchNorm2d

    model, path = exported
    det = bigseer.downstream.maskrcnn(path, num_classes=3, trainable_stages=2, min_size=128, max_size=128)
    body = det.backbone.body
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    assert isinstance(body.stem.bn, FrozenBatchNorm2d)
    ref = model.trunk.state_dict()
    assert torch.equal(body.s4.b1.conv2.conv.weight, ref["s4.b1.conv2.conv.weight"])
    assert torch.equal(body.s1.b1.conv1.bn.running_mean, ref["s1.b1.conv1.bn.running_mean"])
    det.train()
    images = [torch.rand(3, 128, 128) for _ in range(2)]
    losses = det(images, _targets())
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert body.s4.b1.conv2.conv.weight.grad is not None and body.s4.b1.conv2.conv.weight.grad.abs().sum() > 0
    assert body.s3.b1.conv1.conv.weight.grad is not None
    assert not body.s2.b1.conv1.conv.weight.requires_grad and body.s2.b1.conv1.conv.weight.grad is None
    assert not body.stem.conv.weight.requires_grad
    det.eval()
    with torch.no_grad():
        out = det([torch.rand(3, 128, 128)])
    assert set(out[0]) == {"boxes", "labels", "scores", "masks"}


def test_bn_norm_keeps_trainable_batchnorm(exported) -> None:
    _, path = exported
    det = bigseer.downstream.maskrcnn(path, num_classes=3, trainable_stages=5, norm="bn", min_size=128,
                                      max_size=128)
    bns = [m for m in det.backbone.body.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.weight.requires_grad for m in bns)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_classes": 1}, "num_classes=1 is invalid"),
    ({"num_classes": 3, "trainable_stages": 6}, "trainable_stages=6 is invalid"),
    ({"num_classes": 3, "norm": "gn"}, "norm='gn' is invalid"),
])
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        bigseer.downstream.maskrcnn(tmp_path / "missing", **kwargs)


def test_example_coco_dataset_reads_back_consistent_targets(tmp_path: Path) -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "examples" / "maskrcnn.py"
    spec = importlib.util.spec_from_file_location("example_maskrcnn", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    dataset = example.CocoDetection(example.make_coco(tmp_path, n_images=3, size=96))
    assert len(dataset) == 3
    for i in range(3):
        image, target = dataset[i]
        assert image.shape == (3, 96, 96) and 0 <= image.min() and image.max() <= 1
        assert len(target["boxes"]) == len(target["labels"]) == len(target["masks"]) >= 1
        for box, mask in zip(target["boxes"], target["masks"]):
            ys, xs = mask.nonzero(as_tuple=True)
            assert abs(xs.min().item() - box[0].item()) <= 1 and abs(ys.max().item() - box[3].item()) <= 1
