"""The trunk a downstream run starts from: pretrained weights via ``bigseer.load_pretrained``, or a random
initialisation of a preset (the baseline)."""

from __future__ import annotations

import os

from bigseer.errors import CheckpointError
from bigseer.models.regnet import RegNet, build_regnet, resolve_params


def fast_trunk(trunk: RegNet, channels_last: str, compile: str, cpu: bool) -> RegNet:
    """``trunk`` with ``--channels_last`` / ``--compile`` applied (``bigseer.parallel``, as in pretraining;
    ``auto`` follows the device the run uses: ``cpu`` forces CPU)."""
    import torch

    from bigseer.parallel import apply_speedups, speedup_switch

    cuda = torch.cuda.is_available() and not cpu
    apply_speedups(trunk, trunk, channels_last=speedup_switch(channels_last, True, cuda),
                   compile=speedup_switch(compile, False, cuda), sharded=False)
    return trunk


def load_trunk(weights: str | None, model: str | None, seed: int = 0) -> RegNet:
    """``weights`` (any bigseer export / checkpoint dir / timm-layout safetensors; ``model`` names the preset
    where the file does not say) or, without weights, preset ``model`` at random init (seeded).

    The random baseline keeps every residual branch live (no zero-gamma on the blocks' last BN): with
    zero-gamma each block is its 1x1 stride-2 shortcut, so pooled res5 features of a small image depend on
    a handful of corner pixels and frozen-feature baselines (linear, kNN) would be degenerate.

    Raises CheckpointError when the file is missing or does not match ``model``.
    """
    import torch

    if weights is None:
        params = resolve_params(model)  # ConfigError for an unknown preset
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return build_regnet(params, zero_init_last=False)
    if not os.path.exists(weights):
        raise CheckpointError(f"weights {weights!r} do not exist")
    if model is not None:
        resolve_params(model)
    from bigseer.export.load import load_pretrained  # lazy: the export stack is not needed for random init

    trunk = load_pretrained(weights, model=model)
    if model is not None and trunk.params != resolve_params(model):
        raise CheckpointError(f"weights {weights!r} hold a {trunk.params} trunk, not the requested {model!r}")
    return trunk
