"""The ``optim`` section of a run config: steps, LR schedule and LARS (read by ``bigseer.optim`` and the
trainer). Each field is described here, once (``bigseer.flags.doc``)."""

from __future__ import annotations

from dataclasses import dataclass

from bigseer.flags import doc


@dataclass
class OptimSettings:
    """Section ``optim`` of :class:`bigseer.config.PretrainConfig`."""

    max_steps: int = doc(40, 'optimizer steps of the whole run')
    base_lr: float = doc(0.3, 'peak lr = base_lr * global_batch / 256')
    start_lr: float | None = doc(None, 'warmup start; default peak/64 (SEER: 0.15 at peak 9.6)')
    final_lr_ratio: float = doc(0.001, 'cosine end lr = peak x this')
    warmup_steps: int | None = doc(None, 'linear warmup steps; default: 10% of max_steps (SEER RG256: 8000)')
    schedule: str = doc("cosine", 'cosine (warmup + half-cosine) | plateau (fixed lr halved when the loss stops '
                                  'decreasing)')
    plateau_patience: int = doc(1000, 'logged steps without improvement before the plateau schedule halves the lr')
    weight_decay: float = doc(1e-5, 'LARS weight decay (SEER: 1e-5)')
    momentum: float = doc(0.9, 'LARS momentum')
    lars_trust: float = doc(0.001, 'LARS trust coefficient')
    lars_exclude_bn_bias: bool = doc(False, 'no LARS adaptation and no weight decay for 1-d tensors (BN, biases); '
                                            'SEER: off')
    head_warmup_steps: int | None = doc(None, 'first steps in which the trunk stays frozen while a fresh SwAV head '
                                              'learns on it; default: with --init_from and no --init_head, the lr '
                                              'warm-up steps, else 0')
    init_lr_scale: float | None = doc(None, 'the peak lr of a run started --init_from is base_lr x global batch / 256 '
                                            'x this; default 1/8 with --init_from (a trained trunk continued at a '
                                            'from-scratch lr loses its features: benchmarks/results/continue.md), '
                                            'else 1')
