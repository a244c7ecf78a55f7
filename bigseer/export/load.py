"""``bigseer.load_pretrained``: a ready RegNetY trunk from any weights bigseer reads or writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bigseer.export.sources import open_weights
from bigseer.models.regnet import RegNet, RegNetParams, build_regnet


def load_pretrained(path: str | Path, model: str | RegNetParams | dict[str, Any] | None = None) -> RegNet:
    """Build the trunk and load its weights strictly (fp32, eval mode).

    ``path``: a ``bigseer export`` output (timm / torchvision / hf / detectron2 layout, single or
    sharded), a bigseer training checkpoint directory, or a timm / torchvision / HF / pycls / VISSL-SEER
    weights file. ``model`` (preset name or params) is needed only when the file carries no bigseer
    metadata and its shapes match no preset. Raises CheckpointError naming the first differing key.
    """
    opened = open_weights(path, model)
    try:
        trunk = build_regnet(opened.params, device="meta")
        sd = {k: opened.trunk.get(k) for k in opened.trunk.infos()}
        sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
        trunk.load_state_dict(sd, strict=True, assign=True)
    finally:
        opened.close()
    for t in list(trunk.parameters()) + list(trunk.buffers()):
        if t.is_meta:  # pragma: no cover - strict loading assigns every tensor
            raise RuntimeError("trunk tensor left on the meta device")
    return trunk.eval()


