"""Activation checkpointing per RegNet block, with BN running stats updated once per step.

``apply_checkpointing(trunk, spec)`` replaces the ``forward`` of chosen blocks (instance attribute, so
module keys are unchanged) by a non-reentrant ``torch.utils.checkpoint`` call. On the recompute
during backward the block's BatchNorms use the same batch statistics but do not touch their running
statistics again (``track_running_stats`` is switched off for the recompute only).

``spec``: ``"none"``, ``"all"`` (the stem and every block), or a list of 4 entries, one per stage, as
VISSL's ``stage_checkpoints``: each entry is a bool (whole stage), a count ``n`` (the first ``n`` blocks of the
stage) or a list of block indices (0-based) to checkpoint in that stage (the stem is not). As text
(:func:`parse_checkpointing`, the one parser of the flag and the config files): ``none``, ``all``, per-stage
counts ``0,2,8,1``, or a JSON list such as ``[false, true, [0, 2], 1]``. With ``"all"`` the stem keeps only the
images: its conv and (in-place)
ReLU outputs at half the input resolution were otherwise alive through the whole backward
(``benchmarks/results/checkpointing.md``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from bigseer.errors import ConfigError

CheckpointSpec = str | Sequence[bool | int | Sequence[int]] | None
SPEC_HELP = "none | all | per-stage counts like 0,2,8,1 | a JSON per-stage list like [false, true, [0, 2], 1]"


def parse_checkpointing(spec: CheckpointSpec) -> CheckpointSpec:
    """The checkpointing spec of a flag or config value: ``none``/``all`` as they are, ``"0,2,8,1"`` as
    per-stage counts, a JSON list as a per-stage list; non-strings are returned unchanged. ConfigError on
    text that is none of these (the trunk's stage count is checked by :func:`select_blocks`)."""
    if not isinstance(spec, str) or spec in ("none", "all"):
        return spec
    text = spec.strip()
    try:
        if text.startswith("["):
            import json

            parsed = json.loads(text)
            if isinstance(parsed, list):
                return parsed
        else:
            return [int(x) for x in text.split(",")]
    except ValueError:
        pass
    raise ConfigError(f"checkpointing={spec!r} is invalid: {SPEC_HELP}")


def select_blocks(trunk: nn.Module, spec: CheckpointSpec) -> list[nn.Module]:
    """The modules of ``trunk`` (needs ``.stages()``; ``.stem`` if any) that ``spec`` asks to checkpoint, in
    forward order; ConfigError if invalid."""
    stages = list(trunk.stages())
    if spec is None or spec == "none" or spec is False:
        return []
    if spec == "all" or spec is True:
        stem = [trunk.stem] if isinstance(getattr(trunk, "stem", None), nn.Module) else []
        return stem + [b for s in stages for b in s]
    spec = parse_checkpointing(spec)
    if spec == "none":
        return []
    if spec == "all":
        return select_blocks(trunk, "all")
    spec = list(spec)  # type: ignore[arg-type]
    if len(spec) != len(stages):
        raise ConfigError(f"checkpointing list has {len(spec)} entries; the trunk has {len(stages)} stages")
    chosen: list[nn.Module] = []
    for si, (entry, stage) in enumerate(zip(spec, stages)):
        blocks = list(stage)
        if isinstance(entry, bool):
            chosen.extend(blocks if entry else [])
            continue
        if isinstance(entry, int):
            if not 0 <= entry <= len(blocks):
                raise ConfigError(f"checkpointing stage {si}: count {entry} out of range 0..{len(blocks)}")
            chosen.extend(blocks[:entry])
            continue
        for i in entry:
            if not isinstance(i, int) or not 0 <= i < len(blocks):
                raise ConfigError(f"checkpointing stage {si}: block index {i!r} out of range 0..{len(blocks) - 1}")
            chosen.append(blocks[i])
    return chosen


@contextlib.contextmanager
def frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """Within the context, training-mode BN layers in ``module`` normalise with batch statistics as usual
    but leave their running statistics unchanged (momentum 0, counter restored). The same tensors are
    saved for backward as in the first forward, which non-reentrant checkpointing checks."""
    changed = [m for m in module.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in changed]
    for m in changed:
        m.momentum = 0.0
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (momentum, count) in zip(changed, saved):
                m.momentum = momentum
                if count is not None:
                    m.num_batches_tracked.copy_(count)


def _checkpointed_forward(block: nn.Module, original: Any) -> Any:
    def forward(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return original(*args, **kwargs)
        calls = [0]

        def run(*a: Any, **k: Any) -> Any:
            calls[0] += 1
            if calls[0] == 1:
                return original(*a, **k)
            with frozen_bn_stats(block):  # the recompute in backward
                return original(*a, **k)

        return checkpoint(run, *args, use_reentrant=False, **kwargs)

    return forward


def apply_checkpointing(trunk: nn.Module, spec: CheckpointSpec) -> list[nn.Module]:
    """Checkpoint the blocks chosen by ``spec`` in place; returns them. Idempotent per block."""
    chosen = select_blocks(trunk, spec)
    for block in chosen:
        if getattr(block, "_bigseer_checkpointed", False):
            continue
        original = block.forward  # bound method of the class's forward
        block.forward = _checkpointed_forward(block, original)
        block._bigseer_checkpointed = True
    return chosen
