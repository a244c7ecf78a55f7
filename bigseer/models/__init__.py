"""Model definitions: plain single-device PyTorch, no parallelism."""

from bigseer.models.regnet import (
    PRESETS,
    STAGE_NAMES,
    TIMM_NAMES,
    RegNet,
    RegNetParams,
    block_widths,
    build_regnet,
    count_params,
    resolve_params,
)

__all__ = ["PRESETS", "STAGE_NAMES", "TIMM_NAMES", "RegNet", "RegNetParams", "block_widths",
           "build_regnet", "count_params", "resolve_params"]
