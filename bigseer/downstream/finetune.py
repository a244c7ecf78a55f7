"""Full fine-tuning: the whole trunk trains together with a new linear classifier on pooled res5."""

from __future__ import annotations

import torch
from torch import nn

from bigseer.models.regnet import RegNet


class FineTuneClassifier(nn.Module):
    """Trainable trunk -> pooled res5 -> Linear (``fc``) classifier."""

    def __init__(self, trunk: RegNet, num_classes: int) -> None:
        super().__init__()
        self.trunk = trunk
        for p in trunk.parameters():
            p.requires_grad_(True)
        self.fc = nn.Linear(trunk.num_features, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.trunk(x))
