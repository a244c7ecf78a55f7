"""Architecture configs that other libraries need next to the weights (HF config.json, torchvision
BlockParams, timm model name), derived from ``RegNetParams``."""

from __future__ import annotations

from typing import Any

from bigseer.errors import ConfigError
from bigseer.models.regnet import PRESETS, TIMM_NAMES, RegNetParams


def hf_config(params: RegNetParams) -> dict[str, Any]:
    """``config.json`` for ``transformers.RegNetModel`` (layer_type "y").

    HF's RegNetY fixes the bottleneck ratio at 1 and the SE width at round(block input / 4), and uses
    one ``groups_width`` (groups = max(1, width // groups_width)), which equals bigseer's per-stage
    ``min(g, w)`` because stage widths are rounded to multiples of g.
    """
    if params.bottleneck_ratio != 1.0 or params.se_ratio != 0.25:
        raise ConfigError("the hf layout needs bottleneck_ratio=1.0 and se_ratio=0.25 "
                          f"(got {params.bottleneck_ratio}, {params.se_ratio})")
    widths, depths, _ = params.stages()
    return {
        "architectures": ["RegNetModel"], "model_type": "regnet", "layer_type": "y",
        "num_channels": 3, "embedding_size": params.stem_width, "hidden_sizes": widths, "depths": depths,
        "groups_width": params.group_width, "hidden_act": "relu", "downsample_in_first_stage": True,
    }


def torchvision_block_params(params: RegNetParams) -> dict[str, Any]:
    """Keyword arguments for ``torchvision.models.regnet.BlockParams`` giving bigseer's exact network.

    torchvision's named ``regnet_y_*`` constructors round group widths differently (its regnet_y_8gf
    is not SEER's RG8), so bigseer always describes the per-stage widths/depths/group widths.
    """
    widths, depths, groups = params.stages()
    return {"depths": depths, "widths": widths, "group_widths": groups,
            "bottleneck_multipliers": [params.bottleneck_ratio] * 4, "strides": [2, 2, 2, 2],
            "se_ratio": params.se_ratio}


def build_torchvision(params: RegNetParams) -> Any:
    """``torchvision.models.RegNet`` with bigseer's architecture and ``fc = Identity`` (trunk only):
    it loads a torchvision-layout export with ``load_state_dict(strict=True)``."""
    from torch import nn
    from torchvision.models.regnet import BlockParams, RegNet

    model = RegNet(BlockParams(**torchvision_block_params(params)), stem_width=params.stem_width)
    model.fc = nn.Identity()
    return model


def timm_name(params: RegNetParams) -> str | None:
    """timm's model name for the same network (``timm.create_model(name, num_classes=0)``), if any."""
    for name, p in PRESETS.items():
        if p == params:
            return TIMM_NAMES.get(name)
    return None


def preset_name(params: RegNetParams) -> str | None:
    """The bigseer preset with these params, if any."""
    for name, p in PRESETS.items():
        if p == params:
            return name
    return None
