"""SwAV objective: Sinkhorn codes, swapped-prediction loss, projection/prototype head, trunk+head model."""

from bigseer.ssl.sinkhorn import sinkhorn
from bigseer.ssl.swav import swav_loss

__all__ = ["sinkhorn", "swav_loss"]
