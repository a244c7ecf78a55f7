"""Optimisers and LR schedules: ``LARS``, ``build_lars``, ``lars_param_groups``, ``WarmupCosine``,
``seer_warmup_cosine``, ``seer_peak_lr``, ``PlateauHalving``."""

from bigseer.optim.lars import LARS, build_lars, lars_param_groups
from bigseer.optim.schedules import PlateauHalving, WarmupCosine, seer_peak_lr, seer_warmup_cosine

__all__ = ["LARS", "build_lars", "lars_param_groups", "PlateauHalving", "WarmupCosine", "seer_peak_lr",
           "seer_warmup_cosine"]
