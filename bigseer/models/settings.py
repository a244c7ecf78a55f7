"""The ``model`` section of a run config: the trunk and the weights a run starts from (read by
``bigseer.models`` and ``bigseer.warm_start``). Each field is described here, once (``bigseer.flags.doc``)."""

from __future__ import annotations

from dataclasses import dataclass

from bigseer.flags import doc


@dataclass
class ModelSettings:
    """Section ``model`` of :class:`bigseer.config.PretrainConfig`."""

    model: str = doc("regnety_tiny", 'RegNetY preset (`bigseer models` lists them; SEER: regnety_256gf, seer_10b)')
    zero_init_last: bool = doc(True, "zero gamma of each block's last BN (pycls/timm default)")
    init_from: str | None = doc(None, 'start from these trunk weights: a bigseer export or checkpoint, a converted '
                                      'SEER/VISSL file, timm / torchvision / HF weights (what `bigseer convert` '
                                      'reads); a run that has a checkpoint to --resume continues that instead')
    init_head: bool = doc(False, 'also take the SwAV head from --init_from (a bigseer training checkpoint with the '
                                 "run's head); no head warm-up then")
