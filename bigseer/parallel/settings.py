"""The ``parallel`` section of a run config: backend, precision, accumulation and the speed-ups
(read by ``bigseer.parallel``). Each field is described here, once (``bigseer.flags.doc``)."""

from __future__ import annotations

from dataclasses import dataclass

from bigseer.flags import doc


@dataclass
class ParallelSettings:
    """Section ``parallel`` of :class:`bigseer.config.PretrainConfig`."""

    backend: str = doc("auto", 'auto: ddp when launched with >1 rank, else none')
    precision: str = doc("auto", "auto: the DeepSpeed config's, else fp32")
    ds_config: str | None = doc(None, 'DeepSpeed JSON config, a path or a shipped name (ds_configs/); implies '
                                      'backend deepspeed')
    accumulate: int | None = doc(None, 'micro-batches per optimizer step (gradient accumulation) with the maths of N x '
                                       'the ranks: SwAV codes over the whole effective batch, global batch = '
                                       "batch_size x ranks x N; default: the DeepSpeed config's "
                                       'gradient_accumulation_steps, else 1')
    syncbn_group_size: int = doc(0, '0: no SyncBN; -1: whole world; SEER: 64 (10B: 8)')
    checkpointing: str = doc("none", 'activation checkpointing: none | all | per-stage counts like 0,2,8,1 | a JSON '
                                     'per-stage list like [false, true, [0, 2], 1]')
    collective_timeout_s: int = doc(1800, 'a rank stuck this long in a collective ends the job with a line naming it')
    deepspeed_native: bool = doc(False, "also write DeepSpeed's own checkpoint (with `latest`) for its scripts")
    channels_last: str = doc("auto", 'NHWC trunk inputs and conv weights: auto (on CUDA, the faster of on/off for '
                                     "this run's trunk, measured at start-up and cached in OUTPUT_DIR/speedups.json; "
                                     'off on CPU) | on | off')
    compile: str = doc("off", 'torch.compile each trunk block: on | off | auto (measured like channels_last, at the '
                              'cost of a compile)')
