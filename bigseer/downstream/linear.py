"""Linear evaluation: a frozen trunk (weights and BatchNorm statistics untouched) and a linear classifier
on globally average-pooled ``res4`` or ``res5`` features (SEER evaluates both)."""

from __future__ import annotations

import torch
from torch import nn

from bigseer.errors import ConfigError
from bigseer.models.regnet import STAGE_NAMES, RegNet

FEATURE_LAYERS = ("res4", "res5")


def layer_width(trunk: RegNet, layer: str) -> int:
    """Channel count of stage ``layer`` (``res2`` .. ``res5``)."""
    if layer not in STAGE_NAMES:
        raise ConfigError(f"feature layer {layer!r} is unknown; choose one of {', '.join(STAGE_NAMES)}")
    return trunk.stage_widths[STAGE_NAMES.index(layer)]


def pooled_features(trunk: RegNet, x: torch.Tensor, layer: str) -> torch.Tensor:
    """Global-average-pooled features of stage ``layer``: ``[N, width]``."""
    if layer == "res5":
        return trunk(x)
    return trunk.forward_features(x)[layer].mean((2, 3))


def freeze(trunk: nn.Module) -> nn.Module:
    """Stop gradients into ``trunk`` and put it in eval mode (BatchNorm uses, never updates, its stats)."""
    for p in trunk.parameters():
        p.requires_grad_(False)
    return trunk.eval()


class LinearProbe(nn.Module):
    """Frozen trunk -> pooled ``layer`` features -> [BatchNorm1d without affine] -> Linear.

    The non-affine BatchNorm standardises features before the classifier (as in MoCo v3 / MAE linear
    probes), which makes one learning rate work for trunks whose feature scales differ by orders of
    magnitude (e.g. pretrained vs random). ``train()`` never puts the trunk back in training mode.
    """

    def __init__(self, trunk: RegNet, num_classes: int, layer: str = "res5", head_bn: bool = True) -> None:
        super().__init__()
        if layer not in FEATURE_LAYERS:
            raise ConfigError(f"linear evaluation layer {layer!r} is invalid; choose one of {FEATURE_LAYERS}")
        width = layer_width(trunk, layer)
        self.layer = layer
        self.trunk = freeze(trunk)
        self.norm = nn.BatchNorm1d(width, affine=False) if head_bn else nn.Identity()
        self.fc = nn.Linear(width, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def train(self, mode: bool = True) -> "LinearProbe":
        super().train(mode)
        self.trunk.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            feats = pooled_features(self.trunk, x, self.layer)
        return self.fc(self.norm(feats))
