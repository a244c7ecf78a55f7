"""Training checkpoints of every format for the export tests, written as docs/INTERFACES.md specifies."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from bigseer.models import build_regnet


class TinySwAV(nn.Module):
    """SwAVModel-like: ``trunk`` (RegNetY) + ``head``, so state-dict keys are trunk.* / head.*."""

    def __init__(self, preset: str = "regnety_test") -> None:
        super().__init__()
        self.trunk = build_regnet(preset)
        self.head = nn.Linear(self.trunk.num_features, 6)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values everywhere, BN affine and running stats included (zero-init gammas would hide
    mapping bugs); num_batches_tracked set to a non-zero count."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif name.endswith("running_var") or (name.endswith("weight") and t.dim() == 1):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
    return model


def write_meta(step: Path, fmt: str, preset: str, world_size: int, backend: str) -> None:
    step.mkdir(parents=True, exist_ok=True)
    meta = {"format": fmt, "step": 5, "backend": backend, "world_size": world_size, "model": preset,
            "head": {"out": 6}, "config": {}, "bigseer_version": "0.1.0"}
    (step / "meta.json").write_text(json.dumps(meta))
    (step.parent / "latest").write_text(step.name)


def write_torch_checkpoint(root: Path, model: TinySwAV, preset: str = "regnety_test") -> Path:
    """Format "torch" (ddp backend): checkpoints/step_00000005/state.pt + meta.json + latest."""
    step = root / "checkpoints" / "step_00000005"
    write_meta(step, "torch", preset, 1, "ddp")
    torch.save({"model": model.state_dict(), "optimizer": {}, "step": 5}, step / "state.pt")
    return root


def distributed_checkpoints(rank: int, world_size: int, ref_path: str, root: str) -> None:
    """On each gloo rank: an FSDP2 model saved with DCP, and a DeepSpeed ZeRO-3 engine checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    ref = torch.load(ref_path, weights_only=True)
    fsdp_model = TinySwAV()
    fsdp_model.load_state_dict(ref)
    for block in fsdp_model.trunk.blocks():
        fully_shard(block)
    fully_shard(fsdp_model)
    dcp.save({"model": get_model_state_dict(fsdp_model)},
             checkpoint_id=os.path.join(root, "fsdp", "checkpoints", "step_00000005", "dcp"))

    import deepspeed

    ds_model = TinySwAV()
    ds_model.load_state_dict(ref)
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": 3}, "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=ds_model, optimizer=torch.optim.SGD(ds_model.parameters(), lr=0.1),
                                      config=config)
    engine.save_checkpoint(os.path.join(root, "deepspeed", "checkpoints", "step_00000005", "deepspeed"),
                           tag="state")
    engine.destroy()  # DeepSpeed's buffers and hooks end here, not in the interpreter's finalisation
