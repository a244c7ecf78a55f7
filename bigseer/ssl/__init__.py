"""SwAV objective: Sinkhorn codes, swapped-prediction loss, projection/prototype head, trunk+head model."""

from bigseer.ssl.head import SwAVHead
from bigseer.ssl.model import SwAVModel
from bigseer.ssl.sinkhorn import sinkhorn
from bigseer.ssl.swav import swav_loss

__all__ = ["SwAVHead", "SwAVModel", "sinkhorn", "swav_loss"]
