"""The ``swav`` section of a run config: the SwAV head and loss (read by ``bigseer.ssl``). Each field is
described here, once (``bigseer.flags.doc``)."""

from __future__ import annotations

from dataclasses import dataclass

from bigseer.flags import doc


@dataclass
class SwAVSettings:
    """Section ``swav`` of :class:`bigseer.config.PretrainConfig`."""

    head_dims: tuple[int, ...] = doc((256,), 'hidden MLP widths (SEER RG256: 8192, 8192)')
    embed_dim: int = doc(64, 'SwAV embedding dimension (SEER: 256)')
    num_prototypes: int = doc(256, 'SwAV prototypes K (SEER: 16384)')
    temperature: float = doc(0.1, 'softmax temperature of the SwAV scores')
    epsilon: float = doc(0.05, 'Sinkhorn entropy regularisation (SEER: 0.05; SEER-10B: 0.03)')
    sinkhorn_iters: int = doc(3, 'Sinkhorn iterations (SEER: 10)')
    crops_for_assign: tuple[int, ...] = doc((0, 1), 'crops whose Sinkhorn codes are the targets (SwAV: the two large '
                                                    'crops)')
    freeze_prototypes_iters: int = doc(0, 'steps during which the prototypes get no updates (SEER/VISSL: 313)')
    queue_length: int = doc(0, 'SwAV queue rows per rank and micro-batch (a multiple of the per-rank batch; 0: none; '
                               'SEER uses none)')
    shard_prototypes: bool = doc(False, 'shard the prototype rows over ranks (fsdp/ddp) instead of replicating them')
