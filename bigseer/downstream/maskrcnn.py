"""Mask R-CNN (torchvision) on a RegNetY trunk: res2..res5 (strides 4..32) under an FPN.

torchvision is imported inside the functions so importing ``bigseer.downstream`` stays light.
Images go in as RGB in [0, 1]; torchvision's transform normalises with ImageNet mean/std, which is
what SEER trunks expect.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bigseer.errors import ConfigError
from bigseer.models.regnet import STAGE_NAMES, RegNet

NORMS = ("frozen_bn", "bn")


class RegNetFPN(nn.Module):
    """Backbone for torchvision detectors: trunk stage maps -> FPN levels "0".."3" + "pool"."""

    def __init__(self, trunk: RegNet, out_channels: int = 256) -> None:
        super().__init__()
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        self.body = trunk
        self.fpn = FeaturePyramidNetwork(list(trunk.stage_widths), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.body.forward_features(x)
        return self.fpn(OrderedDict((str(i), feats[name]) for i, name in enumerate(STAGE_NAMES)))


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` by torchvision's FrozenBatchNorm2d with the same statistics."""
    from torchvision.ops import FrozenBatchNorm2d

    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                frozen.weight.copy_(child.weight)
                frozen.bias.copy_(child.bias)
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def freeze_stages(trunk: RegNet, trainable_stages: int) -> None:
    """Train only the last ``trainable_stages`` stages (5 = stem too), as torchvision's trainable_layers."""
    modules = [trunk.stem, *trunk.stages()]  # stem, res2, res3, res4, res5
    for i, m in enumerate(modules):
        trainable = i >= len(modules) - trainable_stages
        for p in m.parameters():
            p.requires_grad_(trainable)


def maskrcnn(weights: str | Path | RegNet, num_classes: int, *, trainable_stages: int = 3,
             norm: str = "frozen_bn", fpn_channels: int = 256, model: str | None = None,
             **maskrcnn_kwargs: Any) -> nn.Module:
    """torchvision ``MaskRCNN`` with a RegNetY trunk + FPN backbone.

    ``weights``: anything ``bigseer.load_pretrained`` reads (export dir, training checkpoint, weights
    file) or a ``RegNet``. ``num_classes`` includes the background. ``trainable_stages`` 0..5 (stages
    counted from res5; 5 also trains the stem). ``norm``: "frozen_bn" (FrozenBatchNorm2d, the detection
    default) or "bn" (trainable BatchNorm2d). Extra keyword arguments go to ``MaskRCNN`` (e.g. min_size).
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes={num_classes!r} is invalid: must be an integer >= 2 (background included)")
    if not isinstance(trainable_stages, int) or not 0 <= trainable_stages <= 5:
        raise ConfigError(f"trainable_stages={trainable_stages!r} is invalid: must be an integer in 0..5")
    if norm not in NORMS:
        raise ConfigError(f"norm={norm!r} is invalid: choose one of {', '.join(NORMS)}")
    from torchvision.models.detection import MaskRCNN

    if isinstance(weights, RegNet):
        trunk = weights
    else:
        from bigseer.export.load import load_pretrained

        trunk = load_pretrained(weights, model=model)
    trunk.train()
    if norm == "frozen_bn":
        freeze_batchnorm(trunk)
    freeze_stages(trunk, trainable_stages)
    return MaskRCNN(RegNetFPN(trunk, fpn_channels), num_classes=num_classes, **maskrcnn_kwargs)
